"""Enrolled relays in ``state.db``: id, name, key and the registration counter floor."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import sqlite_utils

from node import state

MIGRATIONS: list[state.Migration] = [
    """
    CREATE TABLE IF NOT EXISTS relays (
        relay_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        key TEXT NOT NULL,
        created REAL NOT NULL,
        hello_floor INTEGER NOT NULL DEFAULT 0
    )
    """,
    """
    CREATE TABLE IF NOT EXISTS relay_box_epoch (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        epoch INTEGER NOT NULL
    )
    """,
]


@dataclass(frozen=True)
class RelayRecord:
    relay_id: bytes
    name: str
    key: bytes
    created: float
    hello_floor: int
    """Highest HELLO counter accepted: an older HELLO is a replay, even after a box restart."""


class RelayStore:
    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db
        state.migrate(db, "relays", MIGRATIONS)

    def issue(self, name: str) -> RelayRecord:
        """A new relay id and a fresh 256-bit key."""
        rec = RelayRecord(secrets.token_bytes(8), name, secrets.token_bytes(32), time.time(), 0)
        with self.db.conn:
            self.db.execute(
                "INSERT INTO relays (relay_id, name, key, created, hello_floor) "
                "VALUES (?, ?, ?, ?, 0)",
                [rec.relay_id.hex(), name, rec.key.hex(), rec.created],
            )
        return rec

    def get(self, relay_id: bytes) -> RelayRecord | None:
        row = self.db.execute(
            "SELECT relay_id, name, key, created, hello_floor FROM relays WHERE relay_id = ?",
            [relay_id.hex()],
        ).fetchone()
        if row is None:
            return None
        return RelayRecord(bytes.fromhex(row[0]), row[1], bytes.fromhex(row[2]), row[3], row[4])

    def all(self) -> list[RelayRecord]:
        rows = self.db.execute("SELECT relay_id FROM relays ORDER BY created").fetchall()
        return [r for row in rows if (r := self.get(bytes.fromhex(row[0]))) is not None]

    def set_floor(self, relay_id: bytes, counter: int) -> None:
        with self.db.conn:
            self.db.execute(
                "UPDATE relays SET hello_floor = ? WHERE relay_id = ? AND hello_floor < ?",
                [counter, relay_id.hex(), counter],
            )

    def next_epoch(self, floor: int) -> int:
        """A new epoch for the box's control counters: above every one handed out before
        (kept here) and at least ``floor`` (from the clock, in case state.db was restored)."""
        with self.db.conn:
            row = self.db.execute("SELECT epoch FROM relay_box_epoch WHERE id = 0").fetchone()
            epoch = max(int(row[0]) + 1 if row else 0, floor)
            self.db.execute(
                "INSERT INTO relay_box_epoch (id, epoch) VALUES (0, ?) "
                "ON CONFLICT(id) DO UPDATE SET epoch = excluded.epoch",
                [epoch],
            )
        return epoch

    def remove(self, relay_id: bytes) -> bool:
        with self.db.conn:
            cur = self.db.execute("DELETE FROM relays WHERE relay_id = ?", [relay_id.hex()])
        return bool(cur.rowcount)
