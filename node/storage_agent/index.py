"""The storage index in ``state.db``: chunks, contracts and placement, rebuilt from files.

Nothing here is the only copy of anything: chunks and contracts are files in the store, and
:func:`rebuild` refills the tables from them (at idle I/O priority, in a thread, while the node
keeps answering audits straight from the chunk files).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlite_utils

from node import log, state
from node.storage_agent.contracts import Contract
from node.storage_agent.errors import ProtocolError, StorageError
from node.storage_agent.store import ChunkStore

_log = log.get_logger(__name__)

MIGRATIONS: list[state.Migration] = [
    """
    CREATE TABLE storage_chunks (
        id TEXT PRIMARY KEY, size INTEGER NOT NULL, stored_at REAL NOT NULL,
        scrubbed_at REAL NOT NULL DEFAULT 0, damaged INTEGER NOT NULL DEFAULT 0);
    CREATE TABLE storage_contracts (
        id TEXT PRIMARY KEY, chunk_id TEXT NOT NULL, client TEXT NOT NULL,
        size INTEGER NOT NULL, price INTEGER NOT NULL, start INTEGER NOT NULL,
        "end" INTEGER NOT NULL, raw BLOB NOT NULL);
    CREATE INDEX storage_contracts_chunk ON storage_contracts(chunk_id);
    CREATE INDEX storage_contracts_client ON storage_contracts(client);
    CREATE TABLE storage_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
]

INDEX_COMPLETE = "index_complete"


def setup(db: sqlite_utils.Database) -> None:
    state.migrate(db, "storage", MIGRATIONS)


def get_meta(db: sqlite_utils.Database, key: str) -> str | None:
    row = db.execute("SELECT value FROM storage_meta WHERE key = ?", [key]).fetchone()
    return None if row is None else str(row[0])


def set_meta(db: sqlite_utils.Database, key: str, value: str | None) -> None:
    with db.conn:
        if value is None:
            db.execute("DELETE FROM storage_meta WHERE key = ?", [key])
        else:
            db.execute(
                "INSERT INTO storage_meta (key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                [key, value],
            )


def add_chunk(db: sqlite_utils.Database, cid: bytes, size: int, now: float) -> None:
    db.execute(
        "INSERT INTO storage_chunks (id, size, stored_at) VALUES (?, ?, ?) "
        "ON CONFLICT(id) DO UPDATE SET damaged = 0",
        [cid.hex(), size, now],
    )


def add_contract(db: sqlite_utils.Database, c: Contract) -> None:
    db.execute(
        'INSERT OR REPLACE INTO storage_contracts (id, chunk_id, client, size, price, start, "end",'
        " raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [c.id.hex(), c.chunk_id.hex(), c.client_key.hex(), c.size, c.price, c.start, c.end,
         c.encode()],
    )  # fmt: skip


def chunk_known(db: sqlite_utils.Database, cid: bytes) -> bool:
    row = db.execute("SELECT 1 FROM storage_chunks WHERE id = ?", [cid.hex()]).fetchone()
    return row is not None


def totals(db: sqlite_utils.Database) -> tuple[int, int]:
    """(chunks, bytes) in the index."""
    row = db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM storage_chunks").fetchone()
    return int(row[0]), int(row[1])


def client_usage(db: sqlite_utils.Database, client: bytes) -> int:
    row = db.execute(
        "SELECT COALESCE(SUM(size), 0) FROM storage_contracts WHERE client = ?", [client.hex()]
    ).fetchone()
    return int(row[0])


def contracts_for(db: sqlite_utils.Database, cid: bytes) -> list[Contract]:
    rows = db.execute(
        "SELECT raw FROM storage_contracts WHERE chunk_id = ?", [cid.hex()]
    ).fetchall()
    return [Contract.decode(bytes(r[0])) for r in rows]


def contract(db: sqlite_utils.Database, contract_id: bytes) -> Contract | None:
    row = db.execute(
        "SELECT raw FROM storage_contracts WHERE id = ?", [contract_id.hex()]
    ).fetchone()
    return None if row is None else Contract.decode(bytes(row[0]))


def list_contracts(db: sqlite_utils.Database, limit: int = 200) -> list[dict[str, Any]]:
    rows = db.execute(
        'SELECT id, client, size, price, start, "end" FROM storage_contracts '
        "ORDER BY start DESC LIMIT ?",
        [limit],
    ).fetchall()
    return [
        {"id": r[0], "client": r[1], "size": r[2], "price": r[3], "start": r[4], "end": r[5]}
        for r in rows
    ]


def expired(db: sqlite_utils.Database, now: float, limit: int = 500) -> list[tuple[str, str]]:
    """(contract id, chunk id) of contracts whose term has ended."""
    rows = db.execute(
        'SELECT id, chunk_id FROM storage_contracts WHERE "end" < ? LIMIT ?', [int(now), limit]
    ).fetchall()
    return [(str(r[0]), str(r[1])) for r in rows]


def orphans(db: sqlite_utils.Database, older_than: float, limit: int = 500) -> list[str]:
    """Chunks without any contract, stored before ``older_than``."""
    rows = db.execute(
        "SELECT id FROM storage_chunks c WHERE stored_at < ? AND NOT EXISTS "
        "(SELECT 1 FROM storage_contracts k WHERE k.chunk_id = c.id) LIMIT ?",
        [older_than, limit],
    ).fetchall()
    return [str(r[0]) for r in rows]


def remove_contract(db: sqlite_utils.Database, contract_id: str) -> None:
    db.execute("DELETE FROM storage_contracts WHERE id = ?", [contract_id])


def remove_chunk(db: sqlite_utils.Database, cid: str) -> None:
    db.execute("DELETE FROM storage_chunks WHERE id = ?", [cid])


def scrub_batch(db: sqlite_utils.Database, before: float, limit: int) -> list[tuple[str, int]]:
    """Chunks last scrubbed before ``before``, oldest first."""
    rows = db.execute(
        "SELECT id, size FROM storage_chunks WHERE scrubbed_at < ? ORDER BY scrubbed_at LIMIT ?",
        [before, limit],
    ).fetchall()
    return [(str(r[0]), int(r[1])) for r in rows]


def mark_scrubbed(db: sqlite_utils.Database, cid: str, now: float, damaged: bool) -> None:
    db.execute(
        "UPDATE storage_chunks SET scrubbed_at = ?, damaged = ? WHERE id = ?",
        [now, int(damaged), cid],
    )


def rebuild(
    db: sqlite_utils.Database,
    store: ChunkStore,
    *,
    verify: bool = True,
    should_stop: Callable[[], bool] = lambda: False,
    batch: int = 500,
) -> dict[str, int]:
    """Refill the chunk and contract tables from the files; returns counts.

    With ``verify`` every chunk is re-hashed and a damaged one is indexed as damaged (scrub and
    repair then deal with it). Runs in a thread with its own connection.
    """
    set_meta(db, INDEX_COMPLETE, None)
    counts = {"chunks": 0, "damaged": 0, "contracts": 0, "bad_contracts": 0, "stray_trees": 0}
    now = time.time()
    pending = 0
    strays: list[Path] = []
    db.conn.execute("BEGIN")
    try:
        for cid, size in store.scan(strays):
            if should_stop():
                db.conn.execute("ROLLBACK")
                return counts
            damaged = False
            if verify:
                try:
                    damaged = not store.verify(cid)[0]
                except (StorageError, OSError):
                    continue
            db.execute(
                "INSERT INTO storage_chunks (id, size, stored_at, scrubbed_at, damaged) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET size = excluded.size, "
                "damaged = excluded.damaged",
                [cid.hex(), size, now, now if verify else 0, int(damaged)],
            )
            counts["chunks"] += 1
            counts["damaged"] += damaged
            pending += 1
            if pending >= batch:
                db.conn.execute("COMMIT")
                db.conn.execute("BEGIN")
                pending = 0
        for raw in store.scan_contracts():
            try:
                c = Contract.decode(raw)
            except ProtocolError:
                counts["bad_contracts"] += 1
                continue
            add_contract(db, c)
            counts["contracts"] += 1
        db.conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(Exception):
            db.conn.execute("ROLLBACK")
        raise
    for path in strays:
        # Tree caches whose chunk is gone (deleted from outside the agent).
        with contextlib.suppress(OSError):
            path.unlink()
            counts["stray_trees"] += 1
    set_meta(db, INDEX_COMPLETE, str(now))
    _log.info("storage_index_rebuilt", **counts)
    return counts
