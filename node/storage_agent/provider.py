"""The storing side of storage/1: accept chunks under contract, serve them, answer audits.

:class:`Provider` is synchronous (file and database I/O); the asyncio glue runs each request
in a worker thread so an fsync never stalls the event loop. One lock serialises database use.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import sqlite_utils

from node import identity, log
from node.storage_agent import audit, index, merkle, wire
from node.storage_agent.contracts import Contract
from node.storage_agent.errors import (
    ChunkCorrupt,
    ChunkMissing,
    ProofError,
    StorageError,
    StoreFull,
    UploadsRefused,
)
from node.storage_agent.ledger import Ledger
from node.storage_agent.reputation import Reputation
from node.storage_agent.store import ChunkStore

_log = log.get_logger(__name__)
GIB = 1 << 30
MONTH = 30 * 86400


@dataclass
class Capacity:
    """How much the node may hold."""

    allocation: int
    """Bytes the owner allocated (0: as much as the reserve allows)."""
    reserve_fraction: float = 0.10
    """Part of the filesystem always left free."""
    client_quota: int = 0
    """Most bytes one client may hold here (0: no per-client limit)."""


@dataclass
class Counters:
    ingress_bytes: int = 0
    egress_bytes: int = 0
    stored: int = 0
    refused: int = 0
    audits_answered: int = 0
    audits_refused: int = 0


@dataclass
class Provider:
    node: identity.Identity
    store: ChunkStore
    db: sqlite_utils.Database
    ledger: Ledger
    capacity: Capacity
    min_price_per_gib_month: int = 0
    """Micro-BCT; offers below are refused."""
    refuse_uploads: Callable[[], str | None] = lambda: None
    """Why uploads are refused right now (None: accepted)."""
    disk_problem: Callable[[], str | None] = lambda: None
    lock: threading.Lock = field(default_factory=threading.Lock)
    counters: Counters = field(default_factory=Counters)
    self_reputation: Reputation = field(default_factory=Reputation)
    """Verdicts verifiers sent back about this node's answers."""

    # -- capacity -------------------------------------------------------------------------

    def used_bytes(self) -> int:
        with self.lock:
            return index.totals(self.db)[1]

    def allocated_bytes(self) -> int:
        """The effective allocation: the owner's, capped to keep the filesystem reserve free."""
        try:
            usage = self.store.usage()
        except OSError:
            return self.capacity.allocation
        ceiling = int(usage.total * (1 - self.capacity.reserve_fraction))
        if self.capacity.allocation:
            return min(self.capacity.allocation, ceiling)
        return ceiling

    def room_for(self, size: int, client: bytes) -> None:
        """Raise :class:`StoreFull` unless ``size`` more bytes fit for ``client``."""
        usage = self.store.usage()
        reserve = int(usage.total * self.capacity.reserve_fraction)
        if usage.free - size < reserve:
            raise StoreFull(
                f"data disk has {usage.free} bytes free and keeps {reserve} in reserve; "
                "no room for another chunk (free space or raise the allocation)"
            )
        with self.lock:
            used = index.totals(self.db)[1]
            client_used = index.client_usage(self.db, client)
        if self.capacity.allocation and used + size > self.capacity.allocation:
            raise StoreFull(
                f"allocation of {self.capacity.allocation} bytes is used up ({used} bytes stored)"
            )
        if self.capacity.client_quota and client_used + size > self.capacity.client_quota:
            raise StoreFull(f"client quota of {self.capacity.client_quota} bytes is used up")

    # -- requests -------------------------------------------------------------------------

    def store_chunk(self, contract: Contract, data: bytes, now: float) -> Contract:
        """Durably store a chunk under a client-signed contract; returns it countersigned."""
        reason = self.refuse_uploads()
        if reason:
            raise UploadsRefused(reason)
        contract.check(need_node=False)
        if contract.node_key != self.node.public_key:
            raise ProofError("contract: made out to another node")
        if contract.end <= now:
            raise ProofError("contract: term already ended")
        if contract.size != len(data):
            raise ProofError(f"contract: size {contract.size} but {len(data)} bytes sent")
        floor = self.min_price_per_gib_month * contract.size * (contract.end - contract.start)
        if contract.price * GIB * MONTH < floor:
            raise ProofError("contract: price below this node's minimum")
        if merkle.root(data) != contract.root:
            raise ProofError("contract: Merkle root does not match the chunk")
        self.room_for(len(data), contract.client_key)
        cid = self.store.put(data, expected=contract.chunk_id)
        signed = contract.signed_by_node(self.node)
        self.store.put_contract(signed.id, signed.encode())
        with self.lock, self.db.conn:
            index.add_chunk(self.db, cid, len(data), now)
            index.add_contract(self.db, signed)
        self.counters.stored += 1
        self.counters.ingress_bytes += len(data)
        return signed

    def fetch(self, cid: bytes) -> bytes:
        data = self.store.read_verified(cid)
        self.counters.egress_bytes += len(data)
        return data

    def prove(self, challenge: audit.Challenge) -> audit.Response:
        """Answer an audit straight from the chunk file (works while the index rebuilds)."""
        data = self.store.read(challenge.chunk_id)
        self.counters.audits_answered += 1
        return audit.answer(challenge, data, self.node)

    def handle(self, msg: wire.Message, peer_key: bytes | None, now: float) -> wire.Message:
        """Answer one request (blocking I/O: call from a worker thread)."""
        try:
            return self._handle(msg, peer_key, now)
        except UploadsRefused as exc:
            self.counters.refused += 1
            return wire.Error(wire.ErrorCode.REFUSED, str(exc))
        except StoreFull as exc:
            self.counters.refused += 1
            return wire.Error(wire.ErrorCode.FULL, str(exc))
        except (ChunkMissing, ChunkCorrupt) as exc:
            # Ask the disk itself too: it may have vanished since the last periodic check,
            # and a missing disk must never count as lost data.
            problem = self.disk_problem() or self.store.disk_problem()
            if problem:
                return wire.Error(wire.ErrorCode.UNAVAILABLE, problem)
            return wire.Error(wire.ErrorCode.MISSING, str(exc))
        except ProofError as exc:
            return wire.Error(wire.ErrorCode.BAD_REQUEST, str(exc))
        except (StorageError, OSError) as exc:
            _log.warning("storage_request_failed", error=str(exc))
            problem = self.disk_problem() or self.store.disk_problem()
            if problem:
                return wire.Error(wire.ErrorCode.UNAVAILABLE, problem)
            return wire.Error(wire.ErrorCode.INTERNAL, str(exc))

    def _handle(self, msg: wire.Message, peer_key: bytes | None, now: float) -> wire.Message:
        match msg:
            case wire.Store(contract, data):
                return wire.Stored(self.store_chunk(contract, data, now))
            case wire.Fetch(cid):
                return wire.Chunk(self.fetch(cid))
            case wire.ChallengeMsg(ch):
                problem = self.disk_problem()
                if problem:
                    self.counters.audits_refused += 1
                    return wire.Error(wire.ErrorCode.UNAVAILABLE, problem)
                return wire.Proof(self.prove(ch))
            case wire.Verdict(_, outcome):
                self.self_reputation.record(self.node.public_key, outcome, now)
                return wire.Ok()
            case wire.VoucherMsg(v):
                problem = self.disk_problem()
                if problem:
                    return wire.Error(wire.ErrorCode.UNAVAILABLE, problem)
                with self.lock:
                    self.ledger.accept(v, now)
                return wire.Ok()
        return wire.Error(wire.ErrorCode.BAD_REQUEST, f"{type(msg).__name__} is not a request")
