"""The earnings ledger: vouchers received, per channel, and daily totals by kind of work.

Each accepted voucher is appended to ``vouchers/<channel>.log`` on the data disk (fsynced)
before it enters ``state.db``; a lost or corrupt state.db is refilled by replaying those logs,
so the history of earnings survives. The newest voucher of a channel is what counts; the
increase over the previous one is credited to the day (UTC) it was issued.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

import sqlite_utils

from node import state
from node.storage_agent.contracts import UNITS_PER_BCT
from node.storage_agent.errors import ProofError, ProtocolError
from node.storage_agent.store import append_durable
from node.storage_agent.vouchers import ENCODED_LEN, KINDS, Voucher

MIGRATIONS: list[state.Migration] = [
    """
    CREATE TABLE ledger_channels (
        channel TEXT PRIMARY KEY, payer TEXT NOT NULL, seq INTEGER NOT NULL,
        issued INTEGER NOT NULL, storage INTEGER NOT NULL, egress INTEGER NOT NULL,
        relay INTEGER NOT NULL, raw BLOB NOT NULL);
    CREATE TABLE ledger_days (
        day TEXT NOT NULL, kind TEXT NOT NULL, amount INTEGER NOT NULL,
        PRIMARY KEY (day, kind));
    """,
]
MAX_FUTURE = 600
"""Seconds a voucher's issue time may lie ahead of our clock."""


def _day(ts: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(ts))


class Ledger:
    """Vouchers for the node ``payee_id``, in ``db`` and in logs under ``log_dir``."""

    def __init__(self, db: sqlite_utils.Database, payee_id: bytes, log_dir: Path) -> None:
        self.db = db
        self.payee_id = payee_id
        self.log_dir = log_dir
        state.migrate(db, "ledger", MIGRATIONS)

    def _latest(self, channel: bytes) -> Voucher | None:
        row = self.db.execute(
            "SELECT raw FROM ledger_channels WHERE channel = ?", [channel.hex()]
        ).fetchone()
        return None if row is None else Voucher.decode(bytes(row[0]))

    def check(self, v: Voucher, now: float) -> Voucher | None:
        """Raise :class:`ProofError` unless ``v`` is acceptable; returns the previous voucher."""
        v.check()
        if v.payee_id != self.payee_id:
            raise ProofError("voucher: made out to another node; refused")
        if v.issued > now + MAX_FUTURE:
            raise ProofError("voucher: issued in the future; refused")
        prev = self._latest(v.channel)
        if prev is not None:
            if v.seq <= prev.seq:
                raise ProofError(f"voucher: sequence {v.seq} is not newer than {prev.seq}")
            for kind in KINDS:
                if getattr(v, kind) < getattr(prev, kind):
                    raise ProofError(f"voucher: cumulative {kind} went down; refused")
        return prev

    def accept(self, v: Voucher, now: float) -> int:
        """Verify and record a voucher; returns the newly credited micro-BCT."""
        prev = self.check(v, now)
        append_durable(self.log_dir / f"{v.channel.hex()}.log", v.encode())
        with self.db.conn:
            return self._apply(v, prev)

    def _apply(self, v: Voucher, prev: Voucher | None) -> int:
        day = _day(v.issued)
        credited = 0
        for kind in KINDS:
            delta = getattr(v, kind) - (getattr(prev, kind) if prev else 0)
            if delta:
                credited += delta
                self.db.execute(
                    "INSERT INTO ledger_days (day, kind, amount) VALUES (?, ?, ?) "
                    "ON CONFLICT(day, kind) DO UPDATE SET amount = amount + excluded.amount",
                    [day, kind, delta],
                )
        self.db.execute(
            "INSERT OR REPLACE INTO ledger_channels (channel, payer, seq, issued, storage, egress,"
            " relay, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [v.channel.hex(), v.payer_key.hex(), v.seq, v.issued, v.storage, v.egress, v.relay,
             v.encode()],
        )  # fmt: skip
        return credited

    def rebuild(self) -> int:
        """Refill the ledger tables from the voucher logs; returns vouchers replayed."""
        replayed = 0
        with self.db.conn:
            self.db.execute("DELETE FROM ledger_channels")
            self.db.execute("DELETE FROM ledger_days")
            if not self.log_dir.exists():
                return 0
            for path in sorted(self.log_dir.glob("*.log")):
                raw = path.read_bytes()
                prev: Voucher | None = None
                for off in range(0, len(raw) - ENCODED_LEN + 1, ENCODED_LEN):
                    try:
                        v = Voucher.decode(raw[off : off + ENCODED_LEN])
                        v.check()
                    except (ProtocolError, ProofError):
                        continue
                    if v.payee_id != self.payee_id or (prev is not None and v.seq <= prev.seq):
                        continue
                    self._apply(v, prev)
                    prev = v
                    replayed += 1
        return replayed

    def empty(self) -> bool:
        return self.db.execute("SELECT 1 FROM ledger_channels LIMIT 1").fetchone() is None

    # -- what the dashboard shows ---------------------------------------------------------

    def by_day(self, days: int = 31) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT day, kind, amount FROM ledger_days ORDER BY day DESC"
        ).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for day, kind, amount in rows:
            entry = out.setdefault(day, {"day": day, "storage": 0.0, "egress": 0.0, "relay": 0.0})
            entry[kind] = amount / UNITS_PER_BCT
        return sorted(out.values(), key=lambda e: e["day"])[-days:]

    def earnings(self, now: float) -> dict[str, Any]:
        today, month = _day(now), _day(now)[:7]
        total = {"today": 0, "month": 0, "all_time": 0}
        for day, amount in self.db.execute(
            "SELECT day, SUM(amount) FROM ledger_days GROUP BY day"
        ).fetchall():
            total["all_time"] += amount
            if day == today:
                total["today"] += amount
            if day.startswith(month):
                total["month"] += amount
        channels = self.db.execute("SELECT COUNT(*) FROM ledger_channels").fetchone()[0]
        return {
            "currency": "BCT",
            **{k: v / UNITS_PER_BCT for k, v in total.items()},
            "by_day": self.by_day(),
            "channels": int(channels),
        }

    def export(self, fmt: str) -> bytes:
        """The newest voucher of each channel, for settlement (``json`` or ``csv``)."""
        rows = self.db.execute(
            "SELECT channel, payer, seq, issued, storage, egress, relay, raw "
            "FROM ledger_channels ORDER BY channel"
        ).fetchall()
        items = [
            {"channel": r[0], "payer": r[1], "payee": self.payee_id.hex(), "seq": r[2],
             "issued": r[3], "storage": r[4], "egress": r[5], "relay": r[6],
             "total_bct": (r[4] + r[5] + r[6]) / UNITS_PER_BCT, "voucher": bytes(r[7]).hex()}
            for r in rows
        ]  # fmt: skip
        if fmt == "json":
            doc = {"currency": "BCT", "units_per_bct": UNITS_PER_BCT, "vouchers": items}
            return (json.dumps(doc, indent=2) + "\n").encode()
        if fmt == "csv":
            buf = io.StringIO()
            fields = list(items[0]) if items else ["channel", "payer", "payee", "seq", "voucher"]
            writer = csv.DictWriter(buf, fieldnames=fields)
            writer.writeheader()
            writer.writerows(items)
            return buf.getvalue().encode()
        raise ValueError(f"export format must be json or csv, not {fmt!r}")
