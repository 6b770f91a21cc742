"""Kademlia (k=20, alpha=3) without I/O: routing, iterative lookups, provider records.

Theory of operation. The core never sends anything itself. Requests it wants sent are pulled
with :meth:`Kademlia.requests_to_send` (each names the destination's record, so the adapter
knows where to connect); the answer is fed back with :meth:`Kademlia.handle_response`, or
:meth:`Kademlia.request_failed` when the adapter could not deliver it; unanswered requests
fail at their deadline in :meth:`Kademlia.handle_timer`. Requests from others go into
:meth:`Kademlia.handle_request`, which returns the answer's bytes. The caller always passes
the authenticated id of the peer (the transport's Noise session proves it), and a record is
only believed when its signature is valid and its key hashes to that id.

A lookup keeps the candidates it has heard of sorted by distance to the target, keeps up to
alpha requests in flight to the closest ones not yet asked, and ends when the k closest
candidates have all answered or failed. Its hop count is the number of answer rounds that led
to the closest node found. Provider records (``key -> node records``) are stored by the k
nodes closest to the key, expire after ``provider_ttl`` and are republished by their provider
every ``republish_interval``. Buckets not used for ``refresh_interval`` are refreshed with a
lookup of a random id inside them.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum

from node import log
from node.overlay import wire
from node.overlay.errors import WireError
from node.overlay.records import NodeRecord
from node.overlay.routing import ID_BITS, RoutingTable
from node.overlay.wire import Message, MsgType

K = 20
ALPHA = 3
RPC_TIMEOUT = 3.0
PROVIDER_TTL = 24 * 3600.0
REPUBLISH_INTERVAL = 12 * 3600.0
REFRESH_INTERVAL = 3600.0
MAINTENANCE_INTERVAL = 60.0  # how often republish and bucket refresh are checked
MAX_PROVIDERS_PER_KEY = 20
MAX_PROVIDER_KEYS = 50_000
MAX_PENDING = 256
_VERIFIED_CACHE = 16384

_log = log.get_logger(__name__)
_verified_cache: OrderedDict[bytes, None] = OrderedDict()


def _verified(record: NodeRecord, now: float) -> bool:
    """Signature check memoised on the record's exact bytes (records are re-sent often)."""
    raw = record.encode()
    if raw in _verified_cache:
        _verified_cache.move_to_end(raw)
        return True
    try:
        record.verify(now)
    except WireError:
        return False
    _verified_cache[raw] = None
    if len(_verified_cache) > _VERIFIED_CACHE:
        _verified_cache.popitem(last=False)
    return True


class LookupKind(Enum):
    NODE = "node"
    PROVIDERS = "providers"
    PROVIDE = "provide"


class Event:
    """Base class of DHT events."""


@dataclass(frozen=True, slots=True)
class LookupDone(Event):
    lookup_id: int
    """Id returned by the call that started the lookup."""
    kind: LookupKind
    """What the lookup was for."""
    target: bytes
    """The id or key looked up."""
    nodes: list[NodeRecord]
    """The closest nodes that answered, nearest first (at most k)."""
    providers: list[NodeRecord]
    """Provider records found (PROVIDERS lookups)."""
    hops: int
    """Answer rounds that led to the closest node found."""
    queried: int
    """Requests sent."""
    found: NodeRecord | None = None
    """The target's own (verified) record when some node returned it, even if the target
    itself did not answer (it may sit behind a NAT that a DHT request cannot cross)."""


@dataclass(frozen=True, slots=True)
class OutRequest:
    request_id: int
    """Id to report the answer or failure under."""
    dest: NodeRecord
    """Who to send it to."""
    data: bytes
    """The encoded request."""


@dataclass
class _Candidate:
    record: NodeRecord
    hop: int
    distance: int
    state: str = "new"  # new, asked, answered, failed
    tries: int = 0


@dataclass
class _Lookup:
    lookup_id: int
    kind: LookupKind
    target: bytes
    candidates: dict[bytes, _Candidate] = field(default_factory=dict)
    providers: dict[bytes, NodeRecord] = field(default_factory=dict)
    inflight: int = 0
    queried: int = 0
    done: bool = False

    @property
    def target_int(self) -> int:
        return int.from_bytes(self.target, "big")


@dataclass
class _Pending:
    dest: NodeRecord
    type: MsgType
    deadline: float
    lookup_id: int | None
    key: bytes = b""


class Kademlia:
    """One node's DHT state; see the module docstring for how to drive it."""

    def __init__(
        self,
        record: NodeRecord,
        *,
        k: int = K,
        alpha: int = ALPHA,
        rpc_timeout: float = RPC_TIMEOUT,
        provider_ttl: float = PROVIDER_TTL,
        republish_interval: float = REPUBLISH_INTERVAL,
        refresh_interval: float = REFRESH_INTERVAL,
        per_subnet: int = 2,
        tries: int = 2,
        rng: random.Random | None = None,
    ) -> None:
        self.record = record
        self.node_id = record.node_id
        self.k = k
        self.alpha = alpha
        self.rpc_timeout = rpc_timeout
        self.tries = tries
        self.provider_ttl = provider_ttl
        self.republish_interval = republish_interval
        self.refresh_interval = refresh_interval
        self.rng = rng or random.Random()
        self.table = RoutingTable(self.node_id, k=k, per_subnet=per_subnet)
        self.providers: OrderedDict[bytes, dict[bytes, tuple[NodeRecord, float]]] = OrderedDict()
        self.provided: dict[bytes, float] = {}
        self._pending: dict[int, _Pending] = {}
        self._lookups: dict[int, _Lookup] = {}
        self._next_lookup = 1
        self._maintenance_at: float | None = None
        self._last_now = 0.0
        self._out: deque[OutRequest] = deque()
        self._events: deque[Event] = deque()
        self.counters = {"requests_in": 0, "bad_messages": 0, "rpc_timeouts": 0, "rejected": 0}

    # -- records -----------------------------------------------------------------------------

    def set_record(self, record: NodeRecord) -> None:
        """Replace our own record (new addresses, NAT class or relays)."""
        if record.node_id != self.node_id:
            raise ValueError("the new record is for another node id")
        self.record = record

    def _valid(self, record: NodeRecord, now: float) -> bool:
        if record.node_id == self.node_id or record.expires < now:
            return False
        if not _verified(record, now):
            self.counters["rejected"] += 1
            return False
        return True

    def add_contact(self, record: NodeRecord, now: float) -> None:
        """Add a bootstrap contact we reached directly (its record is checked)."""
        if self._valid(record, now):
            self._seen(record, now)

    def bootstrap_request(self) -> bytes:
        """A PING for a peer known only by address; its PONG goes to bootstrap_response."""
        return wire.encode(Message(MsgType.PING, self.rng.getrandbits(64), sender=self.record))

    def bootstrap_response(self, src_id: bytes, data: bytes, now: float) -> NodeRecord | None:
        """Take the record from a bootstrap peer's PONG; None unless it is really ``src_id``'s."""
        try:
            msg = wire.decode(data)
        except WireError:
            self.counters["bad_messages"] += 1
            return None
        rec = msg.sender
        if msg.type != MsgType.PONG or rec is None or rec.node_id != src_id:
            self.counters["rejected"] += 1
            return None
        if not self._valid(rec, now):
            return None
        self._seen(rec, now)
        return rec

    def _seen(self, record: NodeRecord, now: float) -> None:
        oldest = self.table.seen(record, now)
        if oldest is not None and now - oldest.pinged_at > self.rpc_timeout:
            oldest.pinged_at = now
            self._request(oldest.record, MsgType.PING, b"", now, None)

    # -- requests we answer -------------------------------------------------------------------

    def handle_request(self, src_id: bytes, data: bytes, now: float) -> bytes | None:
        """Answer a request from the (authenticated) node ``src_id``; None when invalid."""
        self._last_now = now
        try:
            msg = wire.decode(data)
        except WireError as exc:
            self.counters["bad_messages"] += 1
            _log.debug("dht_bad_request", error=str(exc))
            return None
        if not msg.is_request or msg.sender is None:
            self.counters["bad_messages"] += 1
            return None
        self.counters["requests_in"] += 1
        sender = msg.sender
        if sender.node_id != src_id or not self._valid(sender, now):
            # a record whose key does not hash to the id that sent it is a forgery
            self.counters["rejected"] += 1
            return None
        self._seen(sender, now)
        if msg.type == MsgType.PING:
            return wire.encode(Message(MsgType.PONG, msg.request_id, sender=self.record))
        if msg.type == MsgType.FIND_NODE:
            nodes = self.table.closest(msg.key, self.k, exclude=src_id)
            return wire.encode(Message(MsgType.NODES, msg.request_id, nodes=nodes))
        if msg.type == MsgType.GET_PROVIDERS:
            providers = self._live_providers(msg.key, now)
            nodes = self.table.closest(msg.key, self.k, exclude=src_id)
            return wire.encode(
                Message(MsgType.PROVIDERS, msg.request_id, nodes=nodes, providers=providers)
            )
        assert msg.type == MsgType.ADD_PROVIDER
        self._store_provider(msg.key, sender, now)
        return wire.encode(Message(MsgType.ACK, msg.request_id))

    def _store_provider(self, key: bytes, record: NodeRecord, now: float) -> None:
        entry = self.providers.get(key)
        if entry is None:
            if len(self.providers) >= MAX_PROVIDER_KEYS:
                self.providers.popitem(last=False)
            entry = self.providers[key] = {}
        entry[record.node_id] = (record, now + self.provider_ttl)
        self.providers.move_to_end(key)
        if len(entry) > MAX_PROVIDERS_PER_KEY:
            oldest = min(entry, key=lambda nid: entry[nid][1])
            del entry[oldest]

    def _live_providers(self, key: bytes, now: float) -> list[NodeRecord]:
        entry = self.providers.get(key, {})
        for nid in [nid for nid, (rec, exp) in entry.items() if exp < now or rec.expires < now]:
            del entry[nid]
        return [rec for rec, _ in entry.values()][:MAX_PROVIDERS_PER_KEY]

    # -- requests we send ---------------------------------------------------------------------

    def _request(
        self, dest: NodeRecord, mtype: MsgType, key: bytes, now: float, lookup_id: int | None
    ) -> int | None:
        if len(self._pending) >= MAX_PENDING:
            return None
        request_id = self.rng.getrandbits(64)
        while request_id in self._pending:
            request_id = self.rng.getrandbits(64)
        data = wire.encode(Message(mtype, request_id, key=key, sender=self.record))
        self._pending[request_id] = _Pending(dest, mtype, now + self.rpc_timeout, lookup_id, key)
        self._out.append(OutRequest(request_id, dest, data))
        return request_id

    def handle_response(self, request_id: int, src_id: bytes, data: bytes, now: float) -> None:
        self._last_now = now
        pending = self._pending.get(request_id)
        if pending is None or pending.dest.node_id != src_id:
            return
        try:
            msg = wire.decode(data)
        except WireError as exc:
            self.counters["bad_messages"] += 1
            _log.debug("dht_bad_response", error=str(exc))
            self._fail(request_id, now)
            return
        expected = {
            MsgType.PING: MsgType.PONG,
            MsgType.FIND_NODE: MsgType.NODES,
            MsgType.GET_PROVIDERS: MsgType.PROVIDERS,
            MsgType.ADD_PROVIDER: MsgType.ACK,
        }[pending.type]
        if msg.type != expected or msg.request_id != request_id:
            self.counters["bad_messages"] += 1
            self._fail(request_id, now)
            return
        del self._pending[request_id]
        fresh = msg.sender
        if fresh is not None and fresh.node_id == src_id and self._valid(fresh, now):
            pending.dest = fresh
        self._seen(pending.dest, now)
        if pending.lookup_id is not None:
            lookup = self._lookups.get(pending.lookup_id)
            if lookup is not None:
                self._lookup_answer(lookup, pending.dest, msg, now)

    def request_failed(self, request_id: int, now: float) -> None:
        """The adapter could not deliver request ``request_id`` or read its answer."""
        if request_id in self._pending:
            self._fail(request_id, now)

    def _fail(self, request_id: int, now: float) -> None:
        pending = self._pending.pop(request_id)
        self.table.failed(pending.dest.node_id)
        if pending.lookup_id is not None:
            lookup = self._lookups.get(pending.lookup_id)
            if lookup is not None:
                cand = lookup.candidates.get(pending.dest.node_id)
                if cand is not None and cand.state == "asked":
                    cand.state = "new" if cand.tries < self.tries else "failed"
                    lookup.inflight -= 1
                self._step(lookup, now)

    # -- lookups ------------------------------------------------------------------------------

    def find_node(self, target: bytes, now: float) -> int:
        return self._start(LookupKind.NODE, target, now)

    def find_providers(self, key: bytes, now: float) -> int:
        return self._start(LookupKind.PROVIDERS, key, now)

    def provide(self, key: bytes, now: float) -> int:
        """Announce that we hold ``key``; republished every ``republish_interval``."""
        self.provided[key] = now
        return self._start(LookupKind.PROVIDE, key, now)

    def stop_providing(self, key: bytes) -> None:
        self.provided.pop(key, None)

    def _start(self, kind: LookupKind, target: bytes, now: float) -> int:
        self._last_now = now
        lookup = _Lookup(self._next_lookup, kind, target)
        self._next_lookup += 1
        self._lookups[lookup.lookup_id] = lookup
        bucket = self.table.bucket_for(target)
        if bucket is not None:
            bucket.touched = now
        for rec in self.table.closest(target, self.k):
            lookup.candidates[rec.node_id] = _Candidate(rec, 1, rec.id_int ^ lookup.target_int)
        if kind == LookupKind.PROVIDERS:
            for rec in self._live_providers(target, now):
                lookup.providers[rec.node_id] = rec
        self._step(lookup, now)
        return lookup.lookup_id

    def _lookup_answer(self, lookup: _Lookup, dest: NodeRecord, msg: Message, now: float) -> None:
        cand = lookup.candidates.get(dest.node_id)
        hop = 1
        if cand is not None:
            if cand.state == "asked":
                lookup.inflight -= 1
            cand.state = "answered"
            hop = cand.hop
        for rec in msg.nodes[: self.k]:
            nid = rec.node_id
            if nid in lookup.candidates or nid == self.node_id or rec.expires < now:
                continue
            # the signature is checked only if the candidate is ever asked (see _step)
            lookup.candidates[nid] = _Candidate(rec, hop + 1, rec.id_int ^ lookup.target_int)
        for rec in msg.providers:
            if rec.node_id == self.node_id or self._valid(rec, now):
                lookup.providers[rec.node_id] = rec
        self._step(lookup, now)

    def _closest_candidates(self, lookup: _Lookup) -> list[_Candidate]:
        live = (c for c in lookup.candidates.values() if c.state != "failed")
        return heapq.nsmallest(self.k, live, key=lambda c: c.distance)

    def _step(self, lookup: _Lookup, now: float) -> None:
        if lookup.done:
            return
        closest = self._closest_candidates(lookup)
        enough_providers = lookup.kind == LookupKind.PROVIDERS and len(lookup.providers) >= self.k
        mtype = MsgType.GET_PROVIDERS if lookup.kind == LookupKind.PROVIDERS else MsgType.FIND_NODE
        if not enough_providers:
            for cand in closest:
                if lookup.inflight >= self.alpha:
                    break
                if cand.state != "new":
                    continue
                if cand.tries == 0 and not self._valid(cand.record, now):
                    cand.state = "failed"
                    continue
                if self._request(cand.record, mtype, lookup.target, now, lookup.lookup_id) is None:
                    break
                cand.state = "asked"
                cand.tries += 1
                lookup.inflight += 1
                lookup.queried += 1
        if lookup.inflight and not enough_providers:
            return
        if not enough_providers and any(c.state == "new" for c in closest):
            return  # request budget exhausted; retried from handle_timer
        self._finish(lookup, closest, now)

    def _finish(self, lookup: _Lookup, closest: list[_Candidate], now: float) -> None:
        lookup.done = True
        del self._lookups[lookup.lookup_id]
        answered = [c for c in closest if c.state == "answered"]
        hops = answered[0].hop if answered else 0
        nodes = [c.record for c in answered]
        if lookup.kind == LookupKind.PROVIDE:
            for rec in nodes:
                self._request(rec, MsgType.ADD_PROVIDER, lookup.target, now, None)
        self._events.append(
            LookupDone(
                lookup.lookup_id,
                lookup.kind,
                lookup.target,
                nodes,
                list(lookup.providers.values()),
                hops,
                lookup.queried,
                self._target_record(lookup, now),
            )
        )

    def _target_record(self, lookup: _Lookup, now: float) -> NodeRecord | None:
        cand = lookup.candidates.get(lookup.target)
        if cand is None or not self._valid(cand.record, now):
            return None
        return cand.record

    # -- time ---------------------------------------------------------------------------------

    def handle_timer(self, now: float) -> None:
        for request_id in [r for r, p in self._pending.items() if p.deadline <= now]:
            self.counters["rpc_timeouts"] += 1
            self._fail(request_id, now)
        for lookup in list(self._lookups.values()):
            if not lookup.inflight:
                self._step(lookup, now)
        self._last_now = now
        if self._maintenance_at is not None and now >= self._maintenance_at:
            self._maintenance_at = now + MAINTENANCE_INTERVAL
            for key, published in list(self.provided.items()):
                if now - published >= self.republish_interval:
                    self.provided[key] = now
                    self._start(LookupKind.PROVIDE, key, now)
            self.refresh_buckets(now)

    def refresh_buckets(self, now: float) -> None:
        """Look up a random id in each non-empty bucket idle for ``refresh_interval``."""
        for index, bucket in enumerate(self.table.buckets):
            if bucket.contacts and now - bucket.touched >= self.refresh_interval:
                bucket.touched = now
                self._start(LookupKind.NODE, self.random_id_in_bucket(index), now)

    def random_id_in_bucket(self, index: int) -> bytes:
        """A random id whose common prefix with ours is exactly ``index`` bits."""
        own = int.from_bytes(self.node_id, "big")
        bit = ID_BITS - 1 - index
        low = self.rng.getrandbits(bit) if bit else 0
        value = ((own >> (bit + 1)) << (bit + 1)) | ((~own >> bit & 1) << bit) | low
        return value.to_bytes(ID_BITS // 8, "big")

    def get_timer(self) -> float | None:
        deadline = min((p.deadline for p in self._pending.values()), default=None)
        if self._maintenance_at is None and (self.provided or len(self.table)):
            self._maintenance_at = self._last_now + MAINTENANCE_INTERVAL
        if self._maintenance_at is not None:
            deadline = min(deadline or self._maintenance_at, self._maintenance_at)
        return deadline

    def requests_to_send(self) -> list[OutRequest]:
        out = list(self._out)
        self._out.clear()
        return out

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None
