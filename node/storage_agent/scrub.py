"""Background work on the stored chunks, at idle I/O priority: scrub, garbage collection.

Both run in worker threads that lower their own I/O priority to the idle class first, so a
scrub or an index rebuild never competes with uploads, downloads or audit answers for the disk.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psutil

from node import log
from node.storage_agent import index
from node.storage_agent.errors import ChunkMissing, StorageError
from node.storage_agent.provider import Provider

_log = log.get_logger(__name__)
DAMAGED_DIR = "damaged"


def idle_io_priority() -> None:
    """Put the calling thread in the idle I/O scheduling class (Linux; best effort)."""
    with contextlib.suppress(psutil.Error, OSError, AttributeError):
        psutil.Process(threading.get_native_id()).ionice(psutil.IOPRIO_CLASS_IDLE)


@dataclass
class ScrubStats:
    scrubbed: int = 0
    bytes: int = 0
    damaged: int = 0
    last_pass: float = 0.0
    collected: int = field(default=0)
    trees_rebuilt: int = 0


def scrub_batch(
    provider: Provider,
    max_age: float,
    limit: int,
    on_damaged: Callable[[bytes], None],
    stats: ScrubStats,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Re-hash up to ``limit`` chunks not scrubbed for ``max_age`` seconds; returns how many.

    A chunk whose bytes no longer hash to its id is moved to ``damaged/`` (kept for
    inspection, never served), dropped from the index and reported through ``on_damaged``.
    Chunks are streamed in small pieces; a sound chunk without a usable tree cache gets one.
    """
    idle_io_priority()
    now = time.time()
    with provider.lock:
        batch = index.scrub_batch(provider.db, now - max_age, limit)
    done = 0
    for hex_id, _size in batch:
        if should_stop() or provider.disk_problem():
            break
        cid = bytes.fromhex(hex_id)
        try:
            cached = provider.store.load_tree(cid, provider.store.size_of(cid))
            sound, size, leaves = provider.store.verify(cid, leaves=cached is None)
        except ChunkMissing:
            if provider.store.disk_problem():
                break  # the disk went away under us: that is not damage
            sound, size, leaves = False, 0, None
        except (StorageError, OSError):
            continue
        stats.scrubbed += 1
        stats.bytes += size
        done += 1
        if not sound:
            stats.damaged += 1
            quarantine(provider, cid)
            with provider.lock, provider.db.conn:
                index.remove_chunk(provider.db, hex_id)
            _log.warning("chunk_damaged", chunk=hex_id[:16], missing=size == 0)
            on_damaged(cid)
            continue
        if leaves is not None:
            # The chunk is sound (it hashes to its id): its tree cache can be trusted again.
            with contextlib.suppress(StorageError, OSError):
                provider.store.save_tree(cid, size, leaves)
                stats.trees_rebuilt += 1
        with provider.lock, provider.db.conn:
            index.mark_scrubbed(provider.db, hex_id, now, False)
    stats.last_pass = now
    return done


def quarantine(provider: Provider, cid: bytes) -> None:
    """Move a damaged chunk to ``damaged/`` and drop its tree cache."""
    src = provider.store.path_of(cid)
    dst_dir = provider.store.root / DAMAGED_DIR
    with contextlib.suppress(OSError):
        dst_dir.mkdir(mode=0o700, exist_ok=True)
        os.replace(src, dst_dir / cid.hex())
    provider.store.delete(cid)


def collect_garbage(provider: Provider, now: float, orphan_grace: float) -> int:
    """Drop ended contracts, their chunks when nothing else holds them, and chunks stored
    without any contract for longer than ``orphan_grace``; returns files removed.

    Vouchers are never touched: earnings for the ended contracts stay in the ledger.
    """
    removed = 0
    with provider.lock:
        ended = index.expired(provider.db, now)
    for contract_hex, _chunk_hex in ended:
        removed += provider.drop_contract(bytes.fromhex(contract_hex))
    with provider.lock:
        lonely = index.orphans(provider.db, now - orphan_grace)
    for chunk_hex in lonely:
        with provider.lock, provider.db.conn:
            if index.contracts_for(provider.db, bytes.fromhex(chunk_hex)):
                continue  # an upload gave it a contract meanwhile
            provider.store.delete(bytes.fromhex(chunk_hex))
            index.remove_chunk(provider.db, chunk_hex)
        removed += 1
    if removed:
        _log.info("storage_gc", removed=removed)
    return removed


def next_expiry(provider: Provider) -> float | None:
    """When the next contract ends (seconds since the epoch), if any."""
    with provider.lock:
        row = provider.db.execute('SELECT MIN("end") FROM storage_contracts').fetchone()
    return None if row is None or row[0] is None else float(row[0])
