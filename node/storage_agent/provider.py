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
    trees_rebuilt: int = 0
    released: int = 0
    """Tree caches rebuilt from their chunk (missing, damaged or disagreeing with it)."""


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
    on_stored: Callable[[Contract], None] = lambda contract: None
    """Told of every contract countersigned (from the worker thread that stored it)."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    counters: Counters = field(default_factory=Counters)
    self_reputation: Reputation = field(default_factory=Reputation)
    """Verdicts verifiers sent back about this node's answers."""
    _reserved: dict[bytes, int] = field(default_factory=dict)
    """Bytes of uploads in flight, per client."""

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
        """Reserve ``size`` bytes for ``client``; :class:`StoreFull` when they do not fit.

        A reservation holds until :meth:`_unreserve`, so uploads in flight at the same time
        cannot together overrun the allocation or a client's quota.
        """
        usage = self.store.usage()
        reserve = int(usage.total * self.capacity.reserve_fraction)
        if usage.free - size < reserve:
            raise StoreFull(
                f"data disk has {usage.free} bytes free and keeps {reserve} in reserve; "
                "no room for another chunk (free space or raise the allocation)"
            )
        with self.lock:
            used = index.totals(self.db)[1] + sum(self._reserved.values())
            client_used = index.client_usage(self.db, client) + self._reserved.get(client, 0)
            if self.capacity.allocation and used + size > self.capacity.allocation:
                raise StoreFull(
                    f"allocation of {self.capacity.allocation} bytes is used up "
                    f"({used} bytes stored)"
                )
            quota = self.capacity.client_quota
            if quota and client_used + size > quota:
                raise StoreFull(
                    f"client quota of {quota} bytes is used up: this client keeps "
                    f"{client_used} bytes here and offered {size} more"
                )
            self._reserved[client] = self._reserved.get(client, 0) + size

    def _unreserve(self, size: int, client: bytes) -> None:
        with self.lock:
            left = self._reserved.get(client, 0) - size
            if left > 0:
                self._reserved[client] = left
            else:
                self._reserved.pop(client, None)

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
        self.room_for(len(data), contract.client_key)
        kept: list[list[bytes]] = []

        def root_matches(leaves: list[bytes]) -> None:
            if merkle.levels_from_leaves(leaves)[-1][0] != contract.root:
                raise ProofError("contract: Merkle root does not match the chunk")
            kept.append(leaves)

        try:
            cid = self.store.put(data, expected=contract.chunk_id, check=root_matches)
            leaves = kept[0]
            signed = contract.signed_by_node(self.node)
            self.store.put_contract(signed.id, signed.encode())
            with self.lock, self.db.conn:
                if not self.store.has(cid):
                    # Garbage collection removed an older copy between our write and now.
                    self.store.put(data, expected=cid, leaves=leaves)
                index.add_chunk(self.db, cid, len(data), now)
                index.add_contract(self.db, signed)
        finally:
            self._unreserve(len(data), contract.client_key)
        self.counters.stored += 1
        self.on_stored(signed)
        self.counters.ingress_bytes += len(data)
        return signed

    def drop_contract(self, contract_id: bytes) -> int:
        """Forget a contract, and its chunk when no other contract holds it; files removed.

        Runs under the lock, so a chunk is never deleted between an upload writing it and
        the upload's contract entering the index.
        """
        removed = 0
        with self.lock, self.db.conn:
            c = self._contract(contract_id)
            self.store.delete_contract(contract_id)
            index.remove_contract(self.db, contract_id.hex())
            removed += 1
            if c is not None and not index.contracts_for(self.db, c.chunk_id):
                self.store.delete(c.chunk_id)
                index.remove_chunk(self.db, c.chunk_id.hex())
                removed += 1
        return removed

    def _contract(self, contract_id: bytes) -> Contract | None:
        """A stored contract from the index, or from its file while the index is rebuilt."""
        c = index.contract(self.db, contract_id)
        if c is not None:
            return c
        try:
            c = Contract.decode(self.store.contract_path(contract_id).read_bytes())
        except (OSError, StorageError):
            return None
        return c if c.id == contract_id else None

    def release(self, contract_id: bytes, signature: bytes) -> None:
        """The client gives a contract up early: the chunk goes as soon as nothing holds it."""
        with self.lock:
            c = self._contract(contract_id)
        if c is None:
            return  # unknown or already gone: releasing is idempotent
        if not identity.verify(c.client_key, wire.release_body(contract_id), signature):
            raise ProofError("release: signature is not the contract client's")
        self.drop_contract(contract_id)
        self.counters.released += 1
        _log.info("contract_released", contract=contract_id.hex()[:16])

    def fetch(self, cid: bytes) -> bytes:
        data = self.store.read_verified(cid)
        self.counters.egress_bytes += len(data)
        return data

    def prove(self, challenge: audit.Challenge) -> audit.Response:
        """Answer an audit straight from the chunk file (works while the index rebuilds).

        The segments always come from the chunk file; the cached leaf hashes only spare
        hashing the rest of the chunk for the Merkle paths. Each sampled segment is checked
        against its cached leaf first: on any mismatch, or with no usable cache, the whole
        chunk is read and verified against its id, and the cache rewritten from it. A chunk
        that is lost or damaged is never proved from the cache.
        """
        cid = challenge.chunk_id
        response = self._prove_cached(challenge)
        if response is None:
            data = self.store.read_verified(cid)
            leaves = merkle.leaves(data)
            try:
                self.store.save_tree(cid, len(data), leaves)
                self.counters.trees_rebuilt += 1
            except (StorageError, OSError) as exc:
                _log.warning("tree_cache_not_saved", chunk=cid.hex()[:16], error=str(exc))
            tree = merkle.levels_from_leaves(leaves)
            idx = audit.sample_indexes(challenge.nonce, cid, len(leaves), challenge.samples)
            segments = [merkle.segment(data, i) for i in idx]
            response = audit.respond(challenge, tree, segments, self.node)
        self.counters.audits_answered += 1
        return response

    def _prove_cached(self, challenge: audit.Challenge) -> audit.Response | None:
        cid = challenge.chunk_id
        leaves = self.store.load_tree(cid, self.store.size_of(cid))
        if leaves is None:
            return None
        idx = audit.sample_indexes(challenge.nonce, cid, len(leaves), challenge.samples)
        size, segs = self.store.read_segments(cid, sorted(set(idx)))
        if merkle.segment_count(size) != len(leaves):
            return None
        if any(merkle.leaf_hash(segs[i]) != leaves[i] for i in segs):
            return None
        tree = merkle.levels_from_leaves(leaves)
        return audit.respond(challenge, tree, [segs[i] for i in idx], self.node)

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
            case wire.Release(contract_id, signature):
                self.release(contract_id, signature)
                return wire.Ok()
            case wire.VoucherMsg(v):
                problem = self.disk_problem()
                if problem:
                    return wire.Error(wire.ErrorCode.UNAVAILABLE, problem)
                with self.lock:
                    self.ledger.accept(v, now)
                return wire.Ok()
        return wire.Error(wire.ErrorCode.BAD_REQUEST, f"{type(msg).__name__} is not a request")
