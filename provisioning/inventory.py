"""The fleet inventory: one SQLite table of boxes (sqlite-utils), keyed by ``host:port``.

It holds what enrollment pinned (host key, node id) and what the last contact saw (version,
health, error). Every write is an upsert, so running a command twice leaves the same state.
"""

from __future__ import annotations

import json
import os
import sqlite3
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlite_utils

from provisioning.errors import InventoryError


def default_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "bitchat-fleet" / "inventory.db"


@dataclass
class Box:
    """One box as the inventory knows it."""

    id: str
    """``host:port``, the key."""
    host: str
    port: int
    user: str
    node_id: str | None = None
    host_key_type: str | None = None
    host_key: str | None = None
    """Base64 of the SSH host key pinned at enrollment."""
    fingerprint: str | None = None
    version: str | None = None
    previous_version: str | None = None
    enrolled_at: str | None = None
    last_seen: str | None = None
    reachable: bool | None = None
    last_health: str | None = None
    """JSON of the last facts document (status, sensors)."""
    last_error: str | None = None

    @property
    def health(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.last_health or "{}")
        except ValueError:
            return {}
        return doc if isinstance(doc, dict) else {}


_COLUMNS = {f.name: f.type for f in fields(Box)}


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Inventory:
    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite_utils.Database(path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.table = self.db.table("boxes")
            if not self.table.exists():
                self.table.create(
                    {
                        "id": str,
                        "host": str,
                        "port": int,
                        "user": str,
                        "node_id": str,
                        "host_key_type": str,
                        "host_key": str,
                        "fingerprint": str,
                        "version": str,
                        "previous_version": str,
                        "enrolled_at": str,
                        "last_seen": str,
                        "reachable": int,
                        "last_health": str,
                        "last_error": str,
                    },
                    pk="id",
                )
                self.table.create_index(["node_id"])
        except (sqlite3.Error, OSError) as exc:
            raise InventoryError(
                f"cannot open the inventory {path}: {exc}; check the path or pass --inventory"
            ) from exc

    def _box(self, row: dict[str, Any]) -> Box:
        values: dict[str, Any] = {k: row.get(k) for k in _COLUMNS}
        if values["reachable"] is not None:
            values["reachable"] = bool(values["reachable"])
        return Box(**values)

    def get(self, box_id: str) -> Box | None:
        rows = list(self.table.rows_where("id = ?", [box_id]))
        return self._box(rows[0]) if rows else None

    def boxes(self) -> list[Box]:
        return [self._box(r) for r in self.table.rows_where(order_by="id")]

    def enrolled(self) -> list[Box]:
        return [b for b in self.boxes() if b.host_key and b.node_id]

    def by_node_id(self, node_id: str) -> Box | None:
        rows = list(self.table.rows_where("node_id = ?", [node_id]))
        return self._box(rows[0]) if rows else None

    def upsert(self, box_id: str, **values: Any) -> Box:
        unknown = set(values) - set(_COLUMNS)
        if unknown:
            raise ValueError(f"unknown inventory columns {sorted(unknown)}")
        if "reachable" in values and values["reachable"] is not None:
            values["reachable"] = int(bool(values["reachable"]))
        try:
            self.table.upsert({"id": box_id, **values}, pk="id")
        except sqlite3.Error as exc:
            raise InventoryError(f"cannot write the inventory {self.path}: {exc}") from exc
        box = self.get(box_id)
        assert box is not None
        return box

    def forget(self, box_id: str) -> bool:
        if self.get(box_id) is None:
            return False
        self.table.delete(box_id)
        return True
