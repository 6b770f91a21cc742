"""Sans-I/O endpoint: many connections behind one socket, handshake admission, retry cookies.

Theory of operation. ``receive(data, addr, now)`` routes a datagram by its destination
connection id; an INITIAL (destination id all zero) may create a responder connection. Before
any state is allocated an INITIAL must be at least 1200 bytes (so the answer is never larger
than the question) and, once more than ``retry_threshold`` handshakes are half-open, carry a
valid cookie: otherwise the endpoint answers with a stateless RETRY holding one. A cookie is
``timestamp(4) || BLAKE2b-128(secret, ip || port || timestamp || initiator cid)`` and is valid
for ``COOKIE_LIFETIME`` seconds. Limits on sessions (total, per IP, per peer identity) apply
before the Noise work. Everything the endpoint drops is counted; nothing raises. All sessions
draw their receive credit from one :class:`ReceiveBudget`, which bounds buffered stream data
node-wide.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import os
from collections import Counter
from collections.abc import Iterable
from typing import Any

from node.transport import _wire as wire
from node.transport.connection import (
    INTERNAL_ERROR,
    Address,
    ConnectionCore,
    ReceiveBudget,
    State,
    Transmit,
    TransportConfig,
)
from node.transport.errors import HandshakeError, TransportError, WireError
from node.transport.events import ConnectionTerminated, Event, HandshakeCompleted

COOKIE_LIFETIME = 30
DEFAULT_RECEIVE_BUDGET = 64 << 20  # stream bytes all sessions together may make us buffer
COOKIE_LEN = 20
_ZERO_CID = bytes(wire.CID_LEN)


class EndpointCore:
    """All connections of one local address."""

    def __init__(
        self,
        *,
        static_private: bytes,
        public_key: bytes,
        config: TransportConfig | None = None,
        max_sessions: int = 1024,
        max_sessions_per_ip: int = 64,
        max_sessions_per_peer: int = 8,
        retry_threshold: int = 64,
        cookie_secret: bytes | None = None,
        receive_budget: int = DEFAULT_RECEIVE_BUDGET,
    ) -> None:
        self.static_private = static_private
        self.public_key = public_key
        self.config = config or TransportConfig()
        self.max_sessions = max_sessions
        self.max_sessions_per_ip = max_sessions_per_ip
        self.max_sessions_per_peer = max_sessions_per_peer
        self.retry_threshold = retry_threshold
        self._secret = cookie_secret or os.urandom(32)
        self.budget = ReceiveBudget(receive_budget)
        self.connections: dict[bytes, ConnectionCore] = {}
        self._initials: dict[tuple[Address, bytes], ConnectionCore] = {}
        self._per_ip: Counter[str] = Counter()
        self._ip_of: dict[bytes, str] = {}
        self._per_peer: Counter[bytes] = Counter()
        self._peer_of: dict[bytes, bytes] = {}
        self._dirty: dict[bytes, ConnectionCore] = {}
        self._timers: list[tuple[float, int, bytes]] = []
        self._timer_of: dict[bytes, float] = {}
        self._seq = 0
        self._events: list[tuple[ConnectionCore, Event]] = []
        self._raw: list[tuple[bytes, Address]] = []
        self.counters: Counter[str] = Counter()

    # ------------------------------------------------------------------ API

    def connect(
        self,
        addr: Address,
        now: float,
        *,
        peer_public_key: bytes | None = None,
        accept_key_change: bool = False,
    ) -> ConnectionCore:
        """Start a handshake to ``addr`` (IK when the peer's Ed25519 key is known; XX when
        the peer cannot read it, which fails on a changed key unless ``accept_key_change``)."""
        if len(self.connections) >= self.max_sessions:
            raise TransportError(
                f"session limit of {self.max_sessions} reached; raise [network] max_sessions"
            )
        conn = ConnectionCore(
            initiator=True,
            static_private=self.static_private,
            public_key=self.public_key,
            remote_address=addr,
            now=now,
            config=self.config,
            peer_public_key=peer_public_key,
            accept_key_change=accept_key_change,
            budget=self.budget,
        )
        self._add(conn)
        self.touch(conn)
        return conn

    def touch(self, conn: ConnectionCore) -> None:
        """Note that ``conn`` may have something to send (after an API call on it)."""
        self._dirty[conn.local_cid] = conn

    def next_event(self) -> tuple[ConnectionCore, Event] | None:
        return self._events.pop(0) if self._events else None

    def events(self) -> list[tuple[ConnectionCore, Event]]:
        out, self._events = self._events, []
        return out

    # ------------------------------------------------------------------ input

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram; never raises."""
        self.counters["datagrams_in"] += 1
        self.counters["bytes_in"] += len(data)
        try:
            self._receive(data, addr, now)
        except (WireError, HandshakeError, IndexError, ValueError):
            self.counters["malformed"] += 1

    def _receive(self, data: bytes, addr: Address, now: float) -> None:
        ptype = wire.packet_type_of(data)
        if ptype is None:
            self.counters["not_ours"] += 1
            return
        if ptype == wire.PacketType.DATA:
            if len(data) < wire.SHORT_HEADER_LEN + wire.TAG_LEN:
                self.counters["malformed"] += 1
                return
            conn = self.connections.get(data[1 : 1 + wire.CID_LEN])
        else:
            if len(data) < wire.LONG_HEADER_LEN:
                self.counters["malformed"] += 1
                return
            dcid = data[2 : 2 + wire.CID_LEN]
            if ptype == wire.PacketType.INITIAL and dcid == _ZERO_CID:
                self._on_initial(data, addr, now)
                return
            conn = self.connections.get(dcid)
        if conn is None:
            self.counters["unknown_connection"] += 1
            return
        before = conn.counters["auth_failed"] + conn.counters["malformed"]
        conn.receive(data, addr, now)
        if conn.counters["auth_failed"] + conn.counters["malformed"] != before:
            self.counters["dropped_unauthenticated"] += 1
        self._dirty[conn.local_cid] = conn

    def _on_initial(self, data: bytes, addr: Address, now: float) -> None:
        h = wire.decode_long(data)
        existing = self._initials.get((addr, h.scid))
        if existing is not None:
            existing.receive(data, addr, now)
            self._dirty[existing.local_cid] = existing
            return
        if len(data) < wire.MIN_INITIAL_SIZE:
            self.counters["initial_too_small"] += 1
            return
        if h.version != wire.VERSION:
            self.counters["bad_version"] += 1
            return
        validated = False
        if h.token:
            if not self._check_cookie(h.token, addr, h.scid, now):
                self.counters["bad_cookie"] += 1
                return
            validated = True
        elif self.half_open() >= self.retry_threshold:
            self.counters["retry_sent"] += 1
            retry = wire.LongHeader(
                wire.PacketType.RETRY,
                wire.VERSION,
                h.scid,
                _ZERO_CID,
                token=self.make_cookie(addr, h.scid, now),
            )
            self._raw.append((wire.encode_long(retry), addr))
            return
        if len(self.connections) >= self.max_sessions:
            self.counters["refused_session_limit"] += 1
            return
        if self._per_ip[addr[0]] >= self.max_sessions_per_ip:
            self.counters["refused_ip_limit"] += 1
            return
        conn = ConnectionCore(
            initiator=False,
            static_private=self.static_private,
            public_key=self.public_key,
            remote_address=addr,
            now=now,
            config=self.config,
            budget=self.budget,
        )
        conn.address_validated = validated
        try:
            conn.accept_initial(h, addr, len(data), now)
        except HandshakeError:
            self.counters["handshake_failed"] += 1
            return
        self._add(conn)
        self._initials[(addr, h.scid)] = conn
        self._dirty[conn.local_cid] = conn

    def _cookie_mac(self, addr: Address, scid: bytes, ts: bytes) -> bytes:
        msg = addr[0].encode() + b"|" + addr[1].to_bytes(2, "big") + ts + scid
        return hashlib.blake2b(msg, key=self._secret, digest_size=16).digest()

    def make_cookie(self, addr: Address, scid: bytes, now: float) -> bytes:
        ts = (int(now) & 0xFFFFFFFF).to_bytes(4, "big")
        return ts + self._cookie_mac(addr, scid, ts)

    def _check_cookie(self, token: bytes, addr: Address, scid: bytes, now: float) -> bool:
        if len(token) != COOKIE_LEN:
            return False
        ts = token[:4]
        age = (int(now) - int.from_bytes(ts, "big")) & 0xFFFFFFFF
        if age > COOKIE_LIFETIME:
            return False
        return hmac.compare_digest(token[4:], self._cookie_mac(addr, scid, ts))

    def half_open(self) -> int:
        return len(self._initials)

    # ------------------------------------------------------------------ output and timers

    def datagrams_to_send(
        self, now: float, transmit: Transmit | None = None
    ) -> list[tuple[bytes, Address]]:
        """What is ready to go out (see :meth:`ConnectionCore.datagrams_to_send`)."""
        out = self._raw
        self._raw = []
        dirty = self._dirty
        self._dirty = {}
        if transmit is not None:
            send, counters = transmit.send, self.counters

            def counted(data: bytes, addr: Address) -> None:
                counters["datagrams_out"] += 1
                send(data, addr)

            transmit = Transmit(counted, transmit.clock)
        for conn in dirty.values():
            out += conn.datagrams_to_send(now, transmit)
            self._after(conn, now)
        self.counters["datagrams_out"] += len(out)
        return out

    def _after(self, conn: ConnectionCore, now: float) -> None:
        """Collect a connection's events, enforce per-peer limits, re-arm its timer."""
        while conn.events:
            ev = conn.events.popleft()
            if isinstance(ev, HandshakeCompleted):
                self._initials.pop((conn.remote_address, conn.remote_cid), None)
                if conn.peer_public_key == self.public_key:
                    # this node reached itself (its own address among a peer's, a loop)
                    self.counters["refused_self"] += 1
                    conn.close(INTERNAL_ERROR, "connected to itself", now=now)
                    self._dirty[conn.local_cid] = conn
                    continue
                peer = conn.peer_id
                assert peer is not None
                self._per_peer[peer] += 1
                self._peer_of[conn.local_cid] = peer
                if self._per_peer[peer] > self.max_sessions_per_peer:
                    self.counters["refused_peer_limit"] += 1
                    conn.close(INTERNAL_ERROR, "too many sessions from this peer", now=now)
                    self._dirty[conn.local_cid] = conn
                    continue
                self.counters["handshakes_completed"] += 1
            elif isinstance(ev, ConnectionTerminated) and conn.state == State.HANDSHAKE:
                self.counters["handshake_failed"] += 1
            self._events.append((conn, ev))
        if conn.is_closed:
            self._remove(conn)
            return
        t = conn.get_timer()
        if t is not None and self._timer_of.get(conn.local_cid) != t:
            self._timer_of[conn.local_cid] = t
            self._seq += 1
            heapq.heappush(self._timers, (t, self._seq, conn.local_cid))

    def get_timer(self) -> float | None:
        timers = self._timers
        while timers:
            t, _, cid = timers[0]
            if self._timer_of.get(cid) == t:
                return t
            heapq.heappop(timers)
        return None

    def handle_timer(self, now: float) -> None:
        timers = self._timers
        while timers and timers[0][0] <= now:
            t, _, cid = heapq.heappop(timers)
            if self._timer_of.get(cid) != t:
                continue
            del self._timer_of[cid]
            conn = self.connections.get(cid)
            if conn is None:
                continue
            conn.handle_timer(now)
            self._dirty[cid] = conn

    # ------------------------------------------------------------------ bookkeeping

    def _add(self, conn: ConnectionCore) -> None:
        self.connections[conn.local_cid] = conn
        self._ip_of[conn.local_cid] = conn.remote_address[0]
        self._per_ip[conn.remote_address[0]] += 1

    def _remove(self, conn: ConnectionCore) -> None:
        if self.connections.pop(conn.local_cid, None) is None:
            return
        conn.release_budget()
        self._timer_of.pop(conn.local_cid, None)
        ip = self._ip_of.pop(conn.local_cid)
        self._per_ip[ip] -= 1
        if self._per_ip[ip] <= 0:
            del self._per_ip[ip]
        peer = self._peer_of.pop(conn.local_cid, None)
        if peer is not None:
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]
        for key, c in list(self._initials.items()):
            if c is conn:
                del self._initials[key]
        for k in ("lost", "rto", "auth_failed", "replayed", "malformed", "packets_in"):
            self.counters[f"closed_{k}"] += conn.counters.get(k, 0)

    def live(self) -> Iterable[ConnectionCore]:
        return self.connections.values()

    def status(self) -> dict[str, Any]:
        sessions = sum(1 for c in self.connections.values() if c.state == State.ESTABLISHED)
        return {
            "sessions": sessions,
            "half_open": self.half_open(),
            "receive_budget": self.budget.total,
            "receive_budget_free": self.budget.available,
            **dict(self.counters),
        }
