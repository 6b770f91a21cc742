"""The client workload inside an agent: place files on nodes, audit them, pay, repair.

An agent that puts a file is that file's client: it erasure-codes the ciphertext into shares,
places the shares of a stripe on distinct nodes under signed contracts, keeps the placement in
``files/<record id>.json`` on its data disk, audits every share on a schedule (reputation per
node), pays the nodes with cumulative vouchers for audited storage time and served bytes, and
re-creates a share elsewhere when its node fails an audit, stays unreachable, or is
disqualified. Files placed by other agents can still be fetched: their record and shares are
found by asking the known peers.

A contract the client gives up (the shares of a failed put, a share moved by repair, an offer
whose answer never came) is released: the node deletes the share. A node that cannot be
reached then is asked again every repair round, and across restarts (``files/releases.json``),
until it confirms or the contract's term ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import math
import os
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node import identity, log
from node.events import EventLog
from node.storage_agent import audit, client, merkle, wire
from node.storage_agent.contracts import UNITS_PER_BCT, Contract
from node.storage_agent.errors import ChunkMissing, ProofError, StorageError
from node.storage_agent.network import Dialer, Peer, PeerUnreachable
from node.storage_agent.reputation import Reputation
from node.storage_agent.store import chunk_id, write_durable
from node.storage_agent.vouchers import Voucher

_log = log.get_logger(__name__)
GIB = 1 << 30
MONTH = 30 * 86400
RECORD_SHARE = -1
"""Share number marking a replica of the file record itself."""
RELEASE_TIMEOUT = 10.0
RELEASES = "releases.json"
CHANNELS = "channels.json"
AUDITS_AT_ONCE = 8


@dataclass
class PlacerSettings:
    k: int = 4
    n: int = 8
    price_per_gib_month: float = 1.0
    egress_price_per_gib: float = 0.5
    relay_price_per_gib: float = 0.5
    term: float = 30 * 86400.0
    audit_samples: int = audit.DEFAULT_SAMPLES
    audit_deadline: float = audit.DEFAULT_DEADLINE
    repair_after_offline: float = 3600.0
    """Seconds a share's node may stay unreachable before the share is re-created elsewhere."""


@dataclass
class Placement:
    chunk: bytes
    stripe: int
    num: int
    node_key: bytes
    address: tuple[str, int]
    contract: Contract
    paid_until: float
    lost: bool = False
    offline_since: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "chunk": self.chunk.hex(), "stripe": self.stripe, "num": self.num,
            "node": self.node_key.hex(), "address": list(self.address),
            "contract": self.contract.encode().hex(), "paid_until": self.paid_until,
            "lost": self.lost, "offline_since": self.offline_since,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Placement:
        return cls(
            bytes.fromhex(d["chunk"]), int(d["stripe"]), int(d["num"]), bytes.fromhex(d["node"]),
            (str(d["address"][0]), int(d["address"][1])),
            Contract.decode(bytes.fromhex(d["contract"])), float(d["paid_until"]),
            bool(d.get("lost", False)), d.get("offline_since"),
        )  # fmt: skip


@dataclass
class PendingRelease:
    """A contract to give up on a node that has not confirmed it yet."""

    contract: Contract
    address: tuple[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"contract": self.contract.encode().hex(), "address": list(self.address)}

    @classmethod
    def of(cls, p: Placement) -> PendingRelease:
        return cls(p.contract, p.address)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> PendingRelease:
        address = (str(d["address"][0]), int(d["address"][1]))
        return cls(Contract.decode(bytes.fromhex(d["contract"])), address)


@dataclass
class PlacedFile:
    record: client.FileRecord
    placements: list[Placement]


@dataclass
class Channel:
    seq: int = 0
    storage: int = 0
    egress: int = 0
    relay: int = 0
    sent_seq: int = 0
    sent_total: int = 0
    """Sum of the amounts in the last voucher the payee acknowledged."""
    address: tuple[str, int] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq, "storage": self.storage, "egress": self.egress,
            "relay": self.relay, "sent_seq": self.sent_seq, "sent_total": self.sent_total,
            "address": list(self.address) if self.address else None,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Channel:
        addr = d.get("address")
        return cls(
            seq=int(d["seq"]), storage=int(d["storage"]), egress=int(d["egress"]),
            relay=int(d["relay"]), sent_seq=int(d["sent_seq"]), sent_total=int(d["sent_total"]),
            address=(str(addr[0]), int(addr[1])) if addr else None,
        )  # fmt: skip


@dataclass
class Placer:
    ident: identity.Identity
    dialer: Dialer
    peers: Callable[[], list[Peer]]
    files_dir: Path
    tmp_dir: Path
    events: EventLog
    settings: PlacerSettings = field(default_factory=PlacerSettings)
    reputation: Reputation = field(default_factory=Reputation)
    files: dict[bytes, PlacedFile] = field(default_factory=dict)
    channels: dict[bytes, Channel] = field(default_factory=dict)
    releases: dict[bytes, PendingRelease] = field(default_factory=dict)
    """Contracts given up whose node has not confirmed yet, by contract id."""
    auditor: audit.Auditor = field(default_factory=audit.Auditor)
    refresh: Callable[[], Awaitable[int]] | None = None
    """Asks the known addresses again who takes chunks (before giving up on placement)."""
    stats: dict[str, int] = field(
        default_factory=lambda: {
            "audits": 0, "audit_failures": 0, "repairs": 0, "vouchers": 0, "released": 0,
        }
    )  # fmt: skip
    _tasks: set[asyncio.Task[int]] = field(default_factory=set)
    _releasing: asyncio.Task[int] | None = None

    def __post_init__(self) -> None:
        self.auditor.samples = self.settings.audit_samples
        self.auditor.deadline = self.settings.audit_deadline

    # -- persistence ----------------------------------------------------------------------

    def load(self) -> None:
        """Read placement records and payment channels from the data disk."""
        self.files_dir.mkdir(parents=True, exist_ok=True)
        for path in self.files_dir.glob("*.json"):
            if len(path.stem) != 64:
                continue  # channels.json, releases.json
            try:
                doc = json.loads(path.read_text())
                record = client.FileRecord.decode(doc["record"].encode())
                placements = [Placement.from_json(p) for p in doc["placements"]]
            except (
                OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, StorageError
            ) as exc:  # fmt: skip
                _log.warning("placement_record_unreadable", path=str(path), error=str(exc))
                continue
            self.files[record.id] = PlacedFile(record, placements)
        path = self.files_dir / CHANNELS
        try:
            doc = json.loads(path.read_text())
            channels = {bytes.fromhex(key): Channel.from_json(c) for key, c in doc.items()}
        except FileNotFoundError:
            channels = {}
        except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            # Sequence numbers start again from the payees' acknowledgements.
            _log.warning("payment_channels_unreadable", path=str(path), error=str(exc))
            channels = {}
        self.channels.update(channels)
        path = self.files_dir / RELEASES
        try:
            pending = [PendingRelease.from_json(d) for d in json.loads(path.read_text())]
        except FileNotFoundError:
            pending = []
        except (OSError, ValueError, KeyError, TypeError, IndexError, StorageError) as exc:
            # Lost: those nodes keep the shares until the contracts end, as before a release.
            _log.warning("pending_releases_unreadable", path=str(path), error=str(exc))
            pending = []
        self.releases = {r.contract.id: r for r in pending}

    def _save_file(self, pf: PlacedFile) -> None:
        doc = {
            "record": pf.record.encode().decode(),
            "placements": [p.to_json() for p in pf.placements],
        }
        write_durable(
            self.files_dir / f"{pf.record.id.hex()}.json", json.dumps(doc).encode(), self.tmp_dir
        )

    def _save_channels(self) -> None:
        doc = {k.hex(): c.to_json() for k, c in self.channels.items()}
        write_durable(self.files_dir / CHANNELS, json.dumps(doc).encode(), self.tmp_dir)

    def _save_releases(self) -> None:
        doc = [r.to_json() for r in self.releases.values()]
        write_durable(self.files_dir / RELEASES, json.dumps(doc).encode(), self.tmp_dir)

    async def _persist(self, save: Callable[[], None]) -> None:
        """Run one of the ``_save_*`` methods in a thread; deferred while the data disk is
        gone (the state in memory is saved again by the next change)."""
        try:
            await asyncio.to_thread(save)
        except (StorageError, OSError) as exc:
            _log.warning("placement_save_deferred", error=str(exc))

    # -- placing --------------------------------------------------------------------------

    def _candidates(self) -> list[Peer]:
        out = []
        offline = self._offline_nodes()
        for p in self.peers():
            if not p.accepting or p.public_key in offline:
                continue
            rep = self.reputation.nodes.get(p.public_key)
            if rep is not None and (rep.disqualified or rep.suspended):
                continue
            out.append(p)
        random.shuffle(out)
        return out

    def _need_candidates(self) -> list[Peer]:
        candidates = self._candidates()
        if candidates:
            return candidates
        if self.peers():
            raise StorageError(
                f"none of the {len(self.peers())} known storage nodes accepts chunks now "
                "(full, degraded, paused or suspended); no room for the file"
            )
        raise StorageError(
            "no storage nodes known; add peers to [network] bootstrap or start a devnet"
        )

    def _price(self, size: int) -> int:
        units = self.settings.price_per_gib_month * UNITS_PER_BCT * size * self.settings.term
        return math.ceil(units / (GIB * MONTH))

    async def _store_on(self, peer: Peer, data: bytes, now: float) -> Contract:
        offer = Contract(
            chunk_id=chunk_id(data), root=merkle.root(data), size=len(data),
            price=self._price(len(data)), start=int(now), end=int(now + self.settings.term),
            client_key=self.ident.public_key, node_key=peer.public_key,
        ).signed_by_client(self.ident)  # fmt: skip
        try:
            answer = await self.dialer.request(
                peer.address, wire.Store(offer, data), peer_key=peer.public_key
            )
        except PeerUnreachable:
            # The node may have stored the chunk and signed before the answer was lost.
            self.releases[offer.id] = PendingRelease(offer, peer.address)
            raise
        if isinstance(answer, wire.Error):
            raise StorageError(f"{peer.label} refused the chunk: {answer.reason}")
        if not isinstance(answer, wire.Stored):
            raise StorageError(f"{peer.label} answered STORE with {type(answer).__name__}")
        signed = answer.contract
        if signed.body() != offer.body():
            raise ProofError(f"{peer.label} countersigned a different contract")
        signed.check()
        # An earlier try of the same offer (same second, same node) is this contract now.
        self.releases.pop(offer.id, None)
        return signed

    async def _place(
        self, data: bytes, stripe: int, num: int, avoid: set[bytes], now: float
    ) -> Placement:
        """Store one share on a node outside ``avoid`` (or any node when all are in it)."""
        candidates = self._need_candidates()
        fresh = [p for p in candidates if p.public_key not in avoid]
        ordered = fresh + [p for p in candidates if p.public_key in avoid]
        errors = []
        for peer in ordered:
            try:
                contract = await self._store_on(peer, data, now)
            except (StorageError, PeerUnreachable) as exc:
                errors.append(str(exc))
                continue
            avoid.add(peer.public_key)
            return Placement(
                chunk_id(data), stripe, num, peer.public_key, peer.address, contract, now
            )
        raise StorageError("no node accepted the share: " + "; ".join(errors[:3]))

    async def _place_stripe(
        self, stripe: int, data: bytes, now: float, placed: list[Placement]
    ) -> tuple[bytes, ...]:
        """Place the shares of one stripe; each placed share is added to ``placed`` at once,
        so that a failure of another share leaves a complete list of what to release."""
        shares = await asyncio.to_thread(
            client.encode_stripe, data, self.settings.k, self.settings.n
        )
        # Distinct nodes for the shares of a stripe: one candidate per share, in parallel.
        candidates = self._need_candidates()

        async def one(num: int) -> None:
            first = candidates[num % len(candidates)]
            try:
                contract = await self._store_on(first, shares[num], now)
                p = Placement(chunk_id(shares[num]), stripe, num, first.public_key,
                              first.address, contract, now)  # fmt: skip
            except (StorageError, PeerUnreachable) as exc:
                _log.info("share_placement_retry", node=first.label, error=str(exc))
                p = await self._place(shares[num], stripe, num, {first.public_key}, now)
            placed.append(p)

        results = await asyncio.gather(
            *(one(i) for i in range(len(shares))), return_exceptions=True
        )
        for res in results:
            if isinstance(res, BaseException):
                raise res
        return tuple(chunk_id(s) for s in shares)

    async def put(self, ciphertext: AsyncIterator[bytes]) -> bytes:
        """Place a file's ciphertext; returns its record id.

        When the upload fails part-way, every share placed so far is released again (see
        :meth:`_release`), so a failed put leaves nothing under contract on reachable nodes.
        """
        if not self._candidates() and self.refresh is not None:
            await self.refresh()
        placements: list[Placement] = []
        try:
            return await self._put(ciphertext, placements)
        except asyncio.CancelledError:
            self._release_later(placements)
            raise
        except Exception as exc:
            released = await self._release([PendingRelease.of(p) for p in placements])
            if placements:
                self.events.emit(
                    "warning", "storage",
                    f"upload failed ({exc}); released {released} of the {len(placements)} "
                    "shares already placed",
                )  # fmt: skip
            raise

    async def _release(self, items: list[PendingRelease]) -> int:
        """Give up these contracts (their nodes delete the shares); returns how many nodes
        confirmed. The others are kept in :attr:`releases` and asked again by
        :meth:`release_round` until they confirm or the term ends."""
        live = {p.contract.id for pf in self.files.values() for p in pf.placements}

        async def one(r: PendingRelease) -> bool:
            cid = r.contract.id
            msg = wire.Release(cid, self.ident.sign(wire.release_body(cid)))
            try:
                answer = await self.dialer.request(
                    r.address, msg, peer_key=r.contract.node_key, timeout=RELEASE_TIMEOUT
                )
            except (StorageError, PeerUnreachable) as exc:
                _log.info("release_failed", node=r.address, error=str(exc))
                return False
            return isinstance(answer, wire.Ok)

        todo = []
        for r in items:
            if r.contract.id in live:
                self.releases.pop(r.contract.id, None)  # placed again after all: kept
            else:
                todo.append(r)
        done = await asyncio.gather(*(one(r) for r in todo))
        now = time.time()
        for r, ok in zip(todo, done, strict=True):
            if ok or r.contract.end <= now:
                self.releases.pop(r.contract.id, None)
            else:
                self.releases[r.contract.id] = r
        await self._persist(self._save_releases)
        self.stats["released"] += sum(done)
        return sum(done)

    async def release_round(self) -> int:
        """Ask again the nodes that have not confirmed a release; returns how many did."""
        if not self.releases:
            return 0
        return await self._release(list(self.releases.values()))

    def _release_later(self, placements: list[Placement]) -> None:
        if placements:
            items = [PendingRelease.of(p) for p in placements]
            self._background(self._release(items))

    def _start_releases(self) -> None:
        """Run a :meth:`release_round` beside the caller (a node that does not answer holds
        it for :data:`RELEASE_TIMEOUT`), unless one is running."""
        if self.releases and (self._releasing is None or self._releasing.done()):
            self._releasing = self._background(self.release_round())

    def _background(self, work: Coroutine[Any, Any, int]) -> asyncio.Task[int]:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _put(self, ciphertext: AsyncIterator[bytes], placements: list[Placement]) -> bytes:
        now = time.time()
        stripe_size = self.settings.k * client.SHARE_SIZE
        buf = bytearray()
        stripes: list[tuple[int, tuple[bytes, ...]]] = []
        total = 0

        async def flush(data: bytes) -> None:
            ids = await self._place_stripe(len(stripes), data, now, placements)
            stripes.append((len(data), ids))

        async for piece in ciphertext:
            buf += piece
            total += len(piece)
            while len(buf) >= stripe_size:
                await flush(bytes(buf[:stripe_size]))
                del buf[:stripe_size]
        if buf or not stripes:
            await flush(bytes(buf))
        record = client.FileRecord(total, self.settings.k, self.settings.n, tuple(stripes))
        raw = record.encode()
        holders: set[bytes] = set()
        replicas = min(self.settings.n, max(1, len(self._candidates())))
        for _ in range(replicas):
            with contextlib.suppress(StorageError):
                placements.append(await self._place(raw, -1, RECORD_SHARE, holders, now))
        if not any(p.num == RECORD_SHARE for p in placements):
            raise StorageError("no node accepted the file record")
        pf = PlacedFile(record, placements)
        self.files[record.id] = pf
        await self._persist(functools.partial(self._save_file, pf))
        if self.releases:  # offers left without an answer on the way
            await self._persist(self._save_releases)
        self.events.emit(
            "info", "storage", f"stored a file of {total} bytes as {len(placements)} chunks",
            record=record.id.hex()[:16],
        )  # fmt: skip
        return record.id

    # -- fetching -------------------------------------------------------------------------

    async def _fetch_from(self, peer_addr: tuple[str, int], key: bytes | None, cid: bytes) -> bytes:
        answer = await self.dialer.request(peer_addr, wire.Fetch(cid), peer_key=key)
        if isinstance(answer, wire.Error):
            raise ChunkMissing(f"{peer_addr[0]}:{peer_addr[1]}: {answer.reason}")
        if not isinstance(answer, wire.Chunk) or chunk_id(answer.data) != cid:
            raise StorageError(f"{peer_addr[0]}:{peer_addr[1]} sent a wrong chunk")
        if key is not None:
            self._accrue_egress(key, peer_addr, len(answer.data))
        return answer.data

    async def _fetch_any(self, cid: bytes, hint: list[Placement]) -> bytes:
        """The chunk from a node that should have it, else from any known node; nodes that
        recently failed to answer an audit are asked last (or, unhinted, not at all)."""
        tried: set[tuple[str, int]] = set()
        offline = self._offline_nodes()
        for p in sorted(hint, key=lambda q: q.node_key in offline):
            addr = self._address(p.node_key, p.address)
            tried.add(addr)
            with contextlib.suppress(StorageError, PeerUnreachable):
                return await self._fetch_from(addr, p.node_key, cid)
        for peer in self.peers():
            if peer.address in tried or peer.public_key in offline:
                continue
            with contextlib.suppress(StorageError, PeerUnreachable):
                return await self._fetch_from(peer.address, peer.public_key, cid)
        raise ChunkMissing(f"no reachable node has chunk {cid.hex()[:16]}…")

    async def record_of(self, record_id: bytes) -> tuple[client.FileRecord, list[Placement]]:
        pf = self.files.get(record_id)
        if pf is not None:
            return pf.record, pf.placements
        raw = await self._fetch_any(record_id, [])
        return client.FileRecord.decode(raw), []

    async def get(self, record_id: bytes) -> AsyncIterator[bytes]:
        """The file's ciphertext, stripe by stripe (any ``k`` shares of each suffice)."""
        record, placements = await self.record_of(record_id)
        by_chunk: dict[bytes, list[Placement]] = {}
        for p in placements:
            by_chunk.setdefault(p.chunk, []).append(p)
        for size, ids in record.stripes:
            yield await self._get_stripe(record, size, ids, by_chunk)

    async def _get_stripe(
        self, record: client.FileRecord, size: int, ids: tuple[bytes, ...],
        by_chunk: dict[bytes, list[Placement]], skip: frozenset[int] = frozenset(),
    ) -> bytes:  # fmt: skip
        got: dict[int, bytes] = {}
        usable = [i for i in range(len(ids)) if i not in skip]
        offline = self._offline_nodes()

        def reachable(i: int) -> bool:
            return any(q.node_key not in offline for q in by_chunk.get(ids[i], []))

        order = sorted(usable, key=lambda i: (not reachable(i), not by_chunk.get(ids[i]), i))
        pending = list(order)
        while len(got) < record.k and pending:
            batch, pending = pending[: record.k - len(got)], pending[record.k - len(got) :]
            results = await asyncio.gather(
                *(self._fetch_any(ids[i], by_chunk.get(ids[i], [])) for i in batch),
                return_exceptions=True,
            )
            for i, res in zip(batch, results, strict=True):
                if isinstance(res, bytes):
                    got[i] = res
        if len(got) < record.k:
            raise StorageError(
                f"only {len(got)} of {record.k} shares of a stripe are reachable; "
                "the file cannot be read now"
            )
        return await asyncio.to_thread(client.decode_stripe, got, record.k, record.n, size)

    # -- audits, payments, repair ----------------------------------------------------------

    def _address(self, key: bytes, fallback: tuple[str, int]) -> tuple[str, int]:
        """Where node ``key`` is now (it may have moved since the placement was made)."""
        for peer in self.peers():
            if peer.public_key == key:
                return peer.address
        return fallback

    def _channel(self, key: bytes, address: tuple[str, int]) -> Channel:
        ch = self.channels.setdefault(key, Channel())
        ch.address = address
        return ch

    def _accrue_egress(self, key: bytes, address: tuple[str, int], nbytes: int) -> None:
        units = self.settings.egress_price_per_gib * UNITS_PER_BCT * nbytes / GIB
        self._channel(key, address).egress += math.ceil(units)

    def accrue_relay(self, key: bytes, address: tuple[str, int], nbytes: int) -> None:
        """Owe the relay ``key`` for ``nbytes`` more it forwarded for this node."""
        units = self.settings.relay_price_per_gib * UNITS_PER_BCT * nbytes / GIB
        self._channel(key, address).relay += math.ceil(units)

    async def audit_one(self, p: Placement) -> audit.AuditResult:
        now = time.time()
        nonce = os.urandom(audit.NONCE_LEN)
        ch = self.auditor.challenge(p.contract, nonce, now)
        result: audit.AuditResult | None
        try:
            p.address = self._address(p.node_key, p.address)
            answer = await self.dialer.request(
                p.address, wire.ChallengeMsg(ch), peer_key=p.node_key,
                timeout=self.settings.audit_deadline,
            )  # fmt: skip
        except PeerUnreachable:
            result = self.auditor.unreachable(nonce)
        else:
            if isinstance(answer, wire.Proof):
                try:
                    result = self.auditor.receive(answer.response, time.time())
                except ProofError as exc:
                    result = self.auditor.refused(nonce, str(exc))
            elif isinstance(answer, wire.Error) and answer.code is wire.ErrorCode.UNAVAILABLE:
                result = self.auditor.unreachable(nonce)
            else:
                reason = answer.reason if isinstance(answer, wire.Error) else "unexpected answer"
                result = self.auditor.refused(nonce, reason)
        assert result is not None
        now = time.time()
        self.stats["audits"] += 1
        rep = self.reputation.record(p.node_key, result.outcome, now)
        if result.outcome is audit.Outcome.SUCCESS:
            c = p.contract
            span = max(0.0, min(now, c.end) - p.paid_until)
            owed = math.ceil(c.price * span / max(1, c.end - c.start))
            self._channel(p.node_key, p.address).storage += owed
            p.paid_until = max(p.paid_until, min(now, c.end))
        elif result.outcome is audit.Outcome.FAIL:
            self.stats["audit_failures"] += 1
            p.lost = True
            _log.info("audit_failed", node=p.address, reason=result.reason)
        self._note_reachable(p.node_key, result.outcome is not audit.Outcome.OFFLINE, now)
        if result.outcome is not audit.Outcome.OFFLINE:
            with contextlib.suppress(StorageError, PeerUnreachable):
                await self.dialer.request(
                    p.address, wire.Verdict(nonce, result.outcome), peer_key=p.node_key,
                    timeout=5.0,
                )  # fmt: skip
        if rep.disqualified:
            p.lost = True
        return result

    def _note_reachable(self, key: bytes, reachable: bool, now: float) -> None:
        """Whether a node answered is a fact about the node: it applies to all its shares
        (so one unanswered audit starts the offline clock of every share it holds)."""
        for pf in self.files.values():
            for q in pf.placements:
                if q.node_key != key:
                    continue
                if reachable:
                    q.offline_since = None
                elif q.offline_since is None:
                    q.offline_since = now

    def _offline_nodes(self) -> set[bytes]:
        return {
            p.node_key
            for pf in self.files.values()
            for p in pf.placements
            if p.offline_since is not None
        }

    async def audit_round(self, limit: int = 32) -> list[audit.AuditResult]:
        """Audit up to ``limit`` random live placements, a few at a time (a node that does
        not answer holds up only its own slot, not the others)."""
        live = [p for pf in self.files.values() for p in pf.placements if not p.lost]
        random.shuffle(live)
        # A node that stopped answering gets one probe per round, not a challenge per share.
        probed: set[bytes] = set()
        picked = []
        for p in live:
            if p.offline_since is not None:
                if p.node_key in probed:
                    continue
                probed.add(p.node_key)
            picked.append(p)
            if len(picked) >= limit:
                break
        slots = asyncio.Semaphore(AUDITS_AT_ONCE)

        async def one(p: Placement) -> audit.AuditResult:
            async with slots:
                return await self.audit_one(p)

        results = list(await asyncio.gather(*(one(p) for p in picked)))
        audited = {id(p) for p in picked}
        for pf in list(self.files.values()):
            if any(id(p) in audited for p in pf.placements):
                await self._persist(functools.partial(self._save_file, pf))
        return results

    async def pay_round(self) -> int:
        """Send a voucher on every channel that owes more than its last voucher said."""
        now = int(time.time())
        due = []
        for key, ch in self.channels.items():
            if ch.address is None:
                continue
            if ch.storage + ch.egress + ch.relay <= ch.sent_total:
                continue
            ch.seq += 1
            due.append((key, ch))
        if not due:
            return 0
        await self._persist(self._save_channels)
        sent = 0
        for key, ch in due:
            v = Voucher(
                self.ident.public_key, identity.node_id_of(key), ch.seq, now,
                ch.storage, ch.egress, ch.relay,
            ).signed(self.ident)  # fmt: skip
            assert ch.address is not None
            ch.address = self._address(key, ch.address)
            try:
                answer = await self.dialer.request(ch.address, wire.VoucherMsg(v), peer_key=key)
            except PeerUnreachable:
                continue
            if isinstance(answer, wire.Ok):
                ch.sent_seq = max(ch.sent_seq, v.seq)
                ch.sent_total = max(ch.sent_total, v.total)
                sent += 1
        self.stats["vouchers"] += sent
        await self._persist(self._save_channels)
        return sent

    def _needs_repair(self, p: Placement, now: float) -> bool:
        rep = self.reputation.nodes.get(p.node_key)
        if p.lost or (rep is not None and rep.disqualified):
            return True
        return (
            p.offline_since is not None
            and now - p.offline_since > self.settings.repair_after_offline
        )

    async def repair_round(self) -> int:
        """Re-create lost shares (and record replicas) on other nodes; returns how many."""
        now = time.time()
        repaired = 0
        for pf in list(self.files.values()):
            bad = [p for p in pf.placements if self._needs_repair(p, now)]
            if not bad:
                continue
            for p in bad:
                try:
                    data = await self._rebuild_share(pf, p)
                    holders = {
                        q.node_key for q in pf.placements
                        if q.stripe == p.stripe and not self._needs_repair(q, now)
                    }  # fmt: skip
                    new = await self._place(data, p.stripe, p.num, holders, now)
                except (StorageError, PeerUnreachable) as exc:
                    _log.info("repair_failed", chunk=p.chunk.hex()[:16], error=str(exc))
                    continue
                pf.placements[pf.placements.index(p)] = new
                self.releases[p.contract.id] = PendingRelease.of(p)
                repaired += 1
                self.stats["repairs"] += 1  # with the swap: a record saved meanwhile agrees
                self.events.emit(
                    "info", "storage",
                    f"repaired a lost share on {new.address[0]}:{new.address[1]}",
                    chunk=p.chunk.hex()[:16],
                )  # fmt: skip
            await self._persist(functools.partial(self._save_file, pf))
        self._start_releases()
        return repaired

    async def _rebuild_share(self, pf: PlacedFile, p: Placement) -> bytes:
        now = time.time()
        others = [q for q in pf.placements if q is not p and not self._needs_repair(q, now)]
        if p.num == RECORD_SHARE:
            return pf.record.encode()
        size, ids = pf.record.stripes[p.stripe]
        by_chunk: dict[bytes, list[Placement]] = {}
        for q in others:
            by_chunk.setdefault(q.chunk, []).append(q)
        missing_id = ids[p.num]
        stripe = await self._get_stripe(pf.record, size, ids, by_chunk, frozenset([p.num]))
        shares = await asyncio.to_thread(client.encode_stripe, stripe, pf.record.k, pf.record.n)
        data = shares[p.num]
        if chunk_id(data) != missing_id:
            raise StorageError("re-encoded share does not match its id")
        return data

    def knows_chunk(self, cid: bytes) -> bool:
        return any(p.chunk == cid for pf in self.files.values() for p in pf.placements)

    def status(self) -> dict[str, Any]:
        return {
            "files": len(self.files),
            "placements": sum(len(pf.placements) for pf in self.files.values()),
            "releases_pending": len(self.releases),
            **self.stats,
        }
