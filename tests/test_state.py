from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node import state
from node.errors import StateError


def test_open_creates_wal_database(tmp_path: Path) -> None:
    db = state.open_state(tmp_path / "state.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA busy_timeout").fetchone()[0] == state.BUSY_TIMEOUT_MS
    assert "meta" in db.table_names()


def test_migrations_apply_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    steps: list[state.Migration] = [
        "CREATE TABLE things (id INTEGER PRIMARY KEY, name TEXT)",
        lambda db: db["things"].insert({"id": 1, "name": "first"}),
    ]
    db = state.open_state(path)
    assert state.migrate(db, "test", steps) == 2
    assert state.migrate(db, "test", steps) == 2
    assert db.execute("SELECT count(*) FROM things").fetchone()[0] == 1
    steps.append("ALTER TABLE things ADD COLUMN size INTEGER")
    db.conn.close()
    db = state.open_state(path)
    assert state.migrate(db, "test", steps) == 3
    assert "size" in db["things"].columns_dict


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = state.open_state(tmp_path / "state.db")
    state.migrate(db, "test", ["CREATE TABLE a (x)", "CREATE TABLE b (x)"])
    with pytest.raises(StateError, match="newer than this agent knows"):
        state.migrate(db, "test", ["CREATE TABLE a (x)"])


def test_corrupt_database_is_reported_not_touched(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x)")
    conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 500,) for _ in range(200)])
    conn.commit()
    conn.close()
    raw = bytearray(path.read_bytes())
    raw[5000:9000] = b"\xa5" * 4000  # damage interior pages, keep the header
    path.write_bytes(bytes(raw))
    with pytest.raises(StateError, match="corrupt"):
        state.open_state(path)
    assert path.read_bytes() == bytes(raw)
