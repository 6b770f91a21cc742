"""``state.db``: the agent's SQLite database (through sqlite-utils).

Opened in WAL mode with a busy timeout; ``PRAGMA integrity_check`` runs at every start. Each
subsystem owns its tables and their schema history: it calls :func:`migrate` with its component
name and an ordered list of migrations, and the applied version is kept in ``schema_versions``.
Migrations are append-only: never edit one that has shipped, add the next.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlite_utils

from node.errors import StateError

STATE_FILE = "state.db"
BUSY_TIMEOUT_MS = 5000

Migration = str | Callable[[sqlite_utils.Database], None]


def open_state(path: Path, *, check: bool = True) -> sqlite_utils.Database:
    """Open (creating if needed) the state database; raises StateError when it is corrupt."""
    if check and path.exists():
        check_integrity(path)
    try:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA foreign_keys = ON")
    except sqlite3.DatabaseError as exc:
        raise StateError(_corrupt_message(path, str(exc))) from exc
    db = sqlite_utils.Database(conn)
    migrate(db, "core", CORE_MIGRATIONS)
    return db


def open_or_set_aside(path: Path) -> tuple[sqlite_utils.Database, Path | None]:
    """Open state.db; a corrupt one is moved aside (kept for inspection) and a fresh one made.

    Returns the database and where the corrupt file went (None when it was sound). Every
    table in state.db can be refilled from files on the data disk (the storage index from the
    chunk files, earnings from the voucher logs), so starting afresh loses nothing.
    """
    if path.exists():
        try:
            check_integrity(path)
        except StateError:
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            for suffix in ("-wal", "-shm"):
                extra = path.with_name(path.name + suffix)
                if extra.exists():
                    os.replace(extra, aside.with_name(aside.name + suffix))
            os.replace(path, aside)
            dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
            return open_state(path, check=False), aside
    return open_state(path, check=False), None


def check_integrity(path: Path) -> None:
    """Run ``PRAGMA integrity_check`` read-only, so a damaged file is never modified."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            rows = conn.execute("PRAGMA integrity_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise StateError(_corrupt_message(path, str(exc))) from exc
    if [r[0] for r in rows] != ["ok"]:
        raise StateError(_corrupt_message(path, "; ".join(str(r[0]) for r in rows[:3])))


def _corrupt_message(path: Path, detail: str) -> str:
    return (
        f"{path} is corrupt ({detail}); stop the agent, move the file aside "
        f"(mv {path} {path}.bad) and start again to rebuild it"
    )


def migrate(db: sqlite_utils.Database, component: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations of ``component`` not applied yet; returns the schema version."""
    db.execute(
        "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER)"
    )
    row = db.execute(
        "SELECT version FROM schema_versions WHERE component = ?", [component]
    ).fetchone()
    current = int(row[0]) if row else 0
    if current > len(migrations):
        raise StateError(
            f"state.db has schema {component} v{current}, newer than this agent knows "
            f"(v{len(migrations)}); upgrade bitchat-node"
        )
    for version, step in enumerate(migrations[current:], start=current + 1):
        with db.conn:
            if isinstance(step, str):
                db.conn.executescript(step)
            else:
                step(db)
            db.execute(
                "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                [component, version],
            )
    return len(migrations)


CORE_MIGRATIONS: list[Migration] = [
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
]
