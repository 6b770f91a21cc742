"""One encrypted connection, sans I/O: handshake, streams, datagrams, reliability, migration.

Theory of operation. The core is driven by ``receive(data, addr, now)``, ``handle_timer(now)``
and API calls (``open_stream``, ``send_stream``, ``read_stream``, ``send_datagram``,
``close``); its output is pulled with ``datagrams_to_send(now)`` (pairs of bytes and address),
``get_timer()`` and ``next_event()``. Time is always a ``now`` argument.

States (one table, transitions only in the listed methods):

    HANDSHAKE  --msg2 read (IK) / msg3 written (XX, initiator)-->       ESTABLISHED
    HANDSHAKE  --msg2 written (IK) / msg3 read (XX, responder)-->       ESTABLISHED
    any        --close()-->                                             CLOSING
    any        --CLOSE received-->                                      DRAINING
    HANDSHAKE/ESTABLISHED --idle timeout / handshake timeout-->         CLOSED
    CLOSING/DRAINING --3 x RTO-->                                       CLOSED

After the handshake every packet is a DATA packet: short header, then frames sealed with
ChaCha20-Poly1305 under the direction's key, nonce = the packet number, AAD = the header.
Packet numbers only grow, which makes nonces unique and lets a 1024-packet sliding window
reject replays. Every ``key_update_interval`` packets the sender moves to the next key
(Noise REKEY) and flips the key-phase bit.

Reliability follows RFC 9002's packet-number based loss detection (3 packets or 9/8 RTT
behind the largest acknowledged) with the retransmission timer of RFC 6298. Lost stream data
goes back into the stream's retransmit ranges, not into a packet copy, so data that a late ACK
proves delivered is never resent: a spurious timeout cannot cause a retransmission storm.
"""

from __future__ import annotations

import os
import struct
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from nacl.exceptions import CryptoError

from node.identity import node_id_of, verify_key_to_x25519
from node.transport import _wire as wire
from node.transport._aead import open_, seal
from node.transport._ranges import RangeSet
from node.transport.congestion import CongestionControl, create_congestion_control
from node.transport.errors import HandshakeError, TransportError, WireError
from node.transport.events import (
    ConnectionTerminated,
    DatagramReceived,
    Event,
    HandshakeCompleted,
    PathChanged,
    StreamDataReceived,
    StreamOpened,
    StreamReset,
    StreamsAvailable,
)
from node.transport.noise import HandshakeState, rekey

Address = tuple[str, int]

PROLOGUE = b"bitchat-node transport v1"
REPLAY_WINDOW = 1024
_REPLAY_MASK = (1 << REPLAY_WINDOW) - 1

# RFC 9002 section 6.1 / RFC 6298
K_PACKET_THRESHOLD = 3
K_PMTU_PROBES = 3  # RFC 8899 MAX_PROBES: probes of one size before the search stops
K_PMTU_RETRY = 1.0  # seconds before a lost probe is tried again (at least 3 RTTs)
K_PMTU_AGAIN = 60.0  # seconds before a path whose larger packets vanished is probed again
K_TIME_THRESHOLD = 9 / 8
K_GRANULARITY = 0.001
K_INITIAL_RTO = 1.0  # RFC 6298 section 2.1
K_MIN_RTO = 0.2  # RFC 6298 2.4 allows a lower bound under 1 s; 200 ms as in Linux
K_MAX_RTO = 60.0  # RFC 6298 section 2.5
K_MAX_BACKOFF = 6
K_ALPHA = 1 / 8  # RFC 6298 section 2.3
K_BETA = 1 / 4
K_MAX_DATAGRAMS_QUEUED = 64
K_LOST_MEMORY = 256  # packets remembered after being declared lost (late ACKs)
K_ACK_RANGES_PING = 4  # ACK ranges above which an ACK-only packet carries a PING (trimming)
K_MAX_ACK_DELAY_CC = 1.0  # largest reported ACK delay taken off a congestion-control sample
K_PACING_TICK = 0.0002  # shortest pacing wait, seconds
K_PACING_BURST = 8  # datagrams that may leave back to back
K_PACING_WINDOW = 0.010  # seconds of pacing credit kept across an idle period
K_PACING_CATCHUP = 0.025  # ... and across a late timer while pacing held packets back

# error codes carried in CLOSE and RESET_STREAM
NO_ERROR = 0
PROTOCOL_VIOLATION = 1
FLOW_CONTROL_ERROR = 2
STREAM_LIMIT_ERROR = 3
IDLE_TIMEOUT = 4
INTERNAL_ERROR = 5
STREAM_REFUSED = 6
APPLICATION_CLOSED = 7

_AEAD_OVERHEAD = wire.SHORT_HEADER_LEN + wire.TAG_LEN
_PN = struct.Struct(">Q")  # packet number in the short header
_NONCE = struct.Struct("<4xQ")  # the Noise ChaChaPoly nonce of packet number n
_SHORT_FIRST = (
    bytes((wire.FIXED_BIT | wire.PacketType.DATA,)),
    bytes((wire.FIXED_BIT | wire.KEY_PHASE_BIT | wire.PacketType.DATA,)),
)
K_WINDOW_FLOOR = 128 << 10  # connection credit a session always has, beyond the shared budget


class ReceiveBudget:
    """Receive memory shared by all sessions of an endpoint.

    A session's connection-level credit (bytes the peer may still make it buffer: received
    and unread, plus granted and not yet received) above ``K_WINDOW_FLOOR`` is drawn from
    here; bytes the application reads (or discards) go back. So at most
    ``total + K_WINDOW_FLOOR * sessions`` bytes of stream data are ever buffered, and no
    session stalls for want of budget: it always keeps the floor.
    """

    __slots__ = ("available", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.available = total

    def take(self, want: int) -> int:
        n = max(0, min(want, self.available))
        self.available -= n
        return n

    def give(self, n: int) -> None:
        self.available += n


@dataclass(frozen=True, slots=True)
class TransportConfig:
    """Knobs of a connection; both sides may differ."""

    max_datagram_size: int = 1350
    pmtu_probe_size: int = 1452  # datagram size a probe tries once established (0: never)
    idle_timeout: float = 60.0
    keepalive_interval: float = 20.0
    handshake_timeout: float = 10.0
    stream_window: int = 4 << 20
    connection_window: int = 8 << 20
    max_streams: int = 128
    key_update_interval: int = 1 << 16
    max_ack_delay: float = 0.025
    congestion: str = "tolerant"


@dataclass(frozen=True, slots=True)
class PeerParams:
    """What a side announces in its handshake payload."""

    max_data: int
    max_stream_data: int
    max_streams: int
    idle_timeout_ms: int

    def encode(self) -> bytes:
        return b"".join(
            min(v, 0xFFFFFFFF).to_bytes(4, "big")
            for v in (self.max_data, self.max_stream_data, self.max_streams, self.idle_timeout_ms)
        )

    @classmethod
    def decode(cls, data: bytes) -> PeerParams:
        if len(data) < 16:
            raise HandshakeError(f"handshake payload parameters of {len(data)} bytes, need 16")
        v = [int.from_bytes(data[i : i + 4], "big") for i in range(0, 16, 4)]
        return cls(*v)


def identity_payload(ed25519_public: bytes, params: PeerParams) -> bytes:
    return ed25519_public + params.encode()


def check_identity(payload: bytes, remote_static: bytes | None) -> tuple[bytes, PeerParams]:
    """The peer's Ed25519 key and parameters; its X25519 form must be the Noise static key."""
    if len(payload) < 48 or remote_static is None:
        raise HandshakeError(f"handshake payload of {len(payload)} bytes carries no identity")
    pk = payload[:32]
    try:
        derived = verify_key_to_x25519(pk)
    except Exception as exc:
        raise HandshakeError("handshake payload carries an invalid Ed25519 key") from exc
    if derived != remote_static:
        raise HandshakeError("Ed25519 key in the handshake does not match the Noise static key")
    return pk, PeerParams.decode(payload[32:48])


def _covered(pns: list[int], ranges: tuple[tuple[int, int], ...]) -> list[int]:
    """The numbers of the ascending list ``pns`` inside the descending inclusive ACK ranges:
    a bisection per range, so a long list of packets declared lost costs little per ACK."""
    if not pns:
        return []
    first, last = pns[0], pns[-1]
    found: list[int] = []
    for lo, hi in ranges:
        if hi < first:
            break
        if lo > last:
            continue
        found += pns[bisect_left(pns, lo) : bisect_right(pns, hi)]
    return found


class State(Enum):
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    CLOSING = "closing"
    DRAINING = "draining"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Transmit:
    """How an endpoint puts a datagram on the wire at once, and its clock."""

    send: Callable[[bytes, Address], None]
    clock: Callable[[], float]


class SentPacket:
    __slots__ = ("ack_eliciting", "ack_largest", "frames", "pn", "sent_time", "size", "streams")

    def __init__(
        self,
        pn: int,
        sent_time: float,
        size: int,
        ack_eliciting: bool,
        streams: list[tuple[int, int, int, bool]] | None,
        frames: list[wire.Frame] | None,
    ) -> None:
        self.pn = pn
        self.sent_time = sent_time
        self.size = size
        self.ack_eliciting = ack_eliciting
        self.streams = streams
        self.frames = frames
        self.ack_largest = -1  # largest packet number of the ACK frame it carried


class SendStream:
    """Bytes written but not yet acknowledged; ``base`` is the offset of ``buf[0]``."""

    __slots__ = (
        "acked",
        "base",
        "buf",
        "fin_acked",
        "fin_offset",
        "fin_sent",
        "max_data",
        "next_offset",
        "reset",
        "retransmit",
    )

    def __init__(self, max_data: int) -> None:
        self.buf = bytearray()
        self.base = 0
        self.next_offset = 0
        self.acked = RangeSet()
        self.retransmit = RangeSet()
        self.fin_offset: int | None = None
        self.fin_sent = False
        self.fin_acked = False
        self.max_data = max_data
        self.reset = False

    @property
    def end(self) -> int:
        return self.base + len(self.buf)

    @property
    def buffered(self) -> int:
        return len(self.buf)

    def done(self) -> bool:
        return self.reset or (
            self.fin_acked and self.fin_offset is not None and self.base >= self.fin_offset
        )

    def has_new(self) -> bool:
        return self.next_offset < self.end or (
            self.fin_offset is not None and not self.fin_sent and self.next_offset >= self.end
        )

    def on_ack(self, offset: int, length: int, fin: bool) -> None:
        if fin:
            self.fin_acked = self.fin_acked or (offset + length == self.fin_offset)
        if offset + length <= self.base:
            return
        if offset < self.base:
            length -= self.base - offset
            offset = self.base
        if length:
            self.acked.add(offset, offset + length)
            self.retransmit.subtract(offset, offset + length)
            start, stop = self.acked.first()
            if start <= self.base < stop:
                del self.buf[: stop - self.base]
                self.base = stop
                self.acked.shift()

    def on_lost(self, offset: int, length: int, fin: bool) -> None:
        if self.reset:
            return
        stop = offset + length
        if stop > self.base and length:
            self.retransmit.add(max(offset, self.base), stop)
            for a, b in self.acked.ranges():
                if a >= stop:
                    break
                self.retransmit.subtract(a, b)
        if fin and not self.fin_acked:
            self.fin_sent = False

    def data(self, offset: int, length: int) -> bytes:
        i = offset - self.base
        return bytes(self.buf[i : i + length])


class RecvStream:
    """Bytes received: ``ready`` holds the contiguous part the application has not read."""

    __slots__ = (
        "advertised",
        "chunks",
        "eof_read",
        "fin_offset",
        "finished",
        "highest",
        "notified",
        "read_offset",
        "ready",
        "reset_code",
        "stopped",
    )

    def __init__(self, window: int) -> None:
        self.ready = bytearray()
        self.read_offset = 0
        self.chunks: dict[int, bytes] = {}
        self.highest = 0
        self.fin_offset: int | None = None
        self.advertised = window
        self.eof_read = False
        self.finished = False
        self.notified = False
        self.reset_code: int | None = None
        self.stopped = False

    @property
    def recv_offset(self) -> int:
        return self.read_offset + len(self.ready)

    def at_eof(self) -> bool:
        return self.fin_offset is not None and self.recv_offset >= self.fin_offset

    def insert(self, offset: int, data: bytes) -> bool:
        """Store a frame's bytes; True when new bytes became readable."""
        end = offset + len(data)
        recv = self.recv_offset
        if end <= recv:
            return False
        if self.stopped:
            self.read_offset = max(self.read_offset, end)
            return False
        if offset > recv:
            old = self.chunks.get(offset)
            if old is None or len(old) < len(data):
                self.chunks[offset] = data
            return False
        self.ready += data[recv - offset :]
        chunks = self.chunks
        while chunks:
            recv = self.recv_offset
            data_at = chunks.pop(recv, None)
            if data_at is not None:
                self.ready += data_at
                continue
            # overlapping retransmissions: scan for any chunk that starts at or below recv
            progressed = False
            for off in sorted(chunks):
                if off > recv:
                    break
                piece = chunks.pop(off)
                if off + len(piece) > recv:
                    self.ready += piece[recv - off :]
                    progressed = True
                    break
            if not progressed:
                break
        return True

    def buffered(self) -> int:
        return len(self.ready) + sum(len(c) for c in self.chunks.values())


class ConnectionCore:
    """One side of a connection. See the module docstring for the life cycle."""

    def __init__(
        self,
        *,
        initiator: bool,
        static_private: bytes,
        public_key: bytes,
        remote_address: Address,
        now: float,
        config: TransportConfig | None = None,
        peer_public_key: bytes | None = None,
        local_cid: bytes | None = None,
        accept_key_change: bool = False,
        budget: ReceiveBudget | None = None,
    ) -> None:
        self.config = cfg = config or TransportConfig()
        self.initiator = initiator
        self.public_key = public_key
        self.local_cid = local_cid or os.urandom(wire.CID_LEN)
        self.remote_cid = bytes(wire.CID_LEN)
        self.remote_address = remote_address
        self.state = State.HANDSHAKE
        self.created = now
        self.peer_public_key: bytes | None = None
        self._peer_id: bytes | None = None
        self.expected_peer_key = peer_public_key
        # an IK handshake that falls back to XX learns the key the peer holds now; a key other
        # than the expected one fails the handshake unless the caller accepts key changes
        self.accept_key_change = accept_key_change
        self.changed_peer_key: bytes | None = None
        self.pattern = (
            wire.HandshakePattern.IK
            if (initiator and peer_public_key is not None)
            else wire.HandshakePattern.XX
        )
        self._static = static_private
        self._hs: HandshakeState | None = None
        if initiator:
            self._hs = HandshakeState(
                self.pattern.name,
                initiator=True,
                static_private=static_private,
                prologue=PROLOGUE,
                remote_static=(
                    verify_key_to_x25519(peer_public_key) if peer_public_key is not None else None
                ),
            )
        self._budget = budget or ReceiveBudget(cfg.connection_window)
        self._budget_held = 0
        self._peer_params: PeerParams | None = None
        self._hs_packet: bytes | None = None  # our last handshake packet, resent on loss
        self._hs_token = b""
        self._hs_timer: float | None = None
        self._hs_rto = K_INITIAL_RTO
        self._hs_confirmed = False
        self._out: list[tuple[bytes, Address]] = []  # ready-made packets (handshake, probes)
        self.events: deque[Event] = deque()
        # anti-amplification before the peer's address is validated
        self.address_validated = initiator
        self.bytes_received = 0
        self.bytes_sent = 0
        # keys
        self._send_key = b""
        self._send_phase = 0
        self._send_phase_start = 0
        self._recv_key = b""
        self._recv_prev_key: bytes | None = None
        self._recv_phase = 0
        self._recv_phase_start = 0
        # packet numbers and ACK state
        self._next_pn = 0
        self._largest_received = -1
        self._replay_bits = 0
        self._received = RangeSet()
        self._ack_ping_at = float("-inf")  # when an ACK-only packet last carried a PING
        self._ack_eliciting_pending = 0
        self._ack_immediate = False
        self._ack_timer: float | None = None
        self._largest_received_time = 0.0
        # loss recovery
        self._sent: dict[int, SentPacket] = {}
        self._lost: dict[int, list[tuple[int, int, int, bool]]] = {}
        self.bytes_in_flight = 0
        self._largest_acked = -1
        self._loss_time: float | None = None
        self._rto_deadline: float | None = None
        self._rto_backoff = 0
        self._probe_packets = 0
        self.latest_rtt = 0.0
        self.min_rtt = float("inf")
        self.smoothed_rtt: float | None = None
        self.rttvar = 0.0
        self.ack_delay = 0.0  # smoothed ACK delay the peer reports (its scheduling, batching)
        self.cc: CongestionControl = create_congestion_control(
            cfg.congestion, max_datagram_size=cfg.max_datagram_size
        )
        self._pacing_budget = float(cfg.max_datagram_size * 10)
        # Packetization-layer path MTU discovery (RFC 8899, one step): once established, a
        # probe of cfg.pmtu_probe_size bytes (PING and padding) goes out beside the traffic;
        # when it is acknowledged the path carries that size, and packets grow to it. A lost
        # probe is never resent as data and is no congestion signal.
        self.max_datagram_size = cfg.max_datagram_size
        self._pmtu_probe: tuple[int, float] | None = None  # (packet number, sent at)
        self._pmtu_failures = 0
        self._pmtu_next = 0.0
        self._pacing_time = now
        self._pacing_timer: float | None = None
        self._paced = False  # the last send loop stopped for pacing
        self.rate_cap: float | None = None  # bytes/s imposed from outside (work limits)
        # streams and flow control
        self._send_streams: dict[int, SendStream] = {}
        self._recv_streams: dict[int, RecvStream] = {}
        self._send_queue: deque[int] = deque()  # streams with something to send
        self._next_local_stream = 0 if initiator else 1
        self._peer_max_streams = 0
        self._local_max_streams = cfg.max_streams
        self._peer_streams_opened = 0
        self._peer_streams_done = 0
        self._max_streams_pending = False
        self._peer_max_data = 0
        self._data_sent = 0
        self._local_max_data = 0  # granted with the handshake payload
        self._data_received = 0
        self._data_consumed = 0
        self._max_data_pending = False
        self._max_stream_data_pending: set[int] = set()
        self._control: list[wire.Frame] = []
        self._datagrams: deque[bytes] = deque()
        self._ping_pending = False
        # paths
        self._challenges: dict[bytes, tuple[Address, float]] = {}
        self._path_out: list[tuple[wire.Frame, Address]] = []
        # timers
        self._last_received = now
        self._last_sent_eliciting = now
        self._close_deadline: float | None = None
        self._close_frame: wire.Close | None = None
        self._close_sent_at = float("-inf")
        self.counters: dict[str, int] = {
            "packets_in": 0,
            "packets_out": 0,
            "bytes_in": 0,
            "bytes_out": 0,
            "lost": 0,
            "rto": 0,
            "auth_failed": 0,
            "replayed": 0,
            "malformed": 0,
            "key_updates": 0,
            "pacing_waits": 0,
            "cwnd_limited": 0,
        }
        if initiator:
            self._start_handshake(now)

    # ------------------------------------------------------------------ properties

    @property
    def peer_id(self) -> bytes | None:
        return self._peer_id

    @property
    def is_established(self) -> bool:
        return self.state == State.ESTABLISHED

    @property
    def is_closed(self) -> bool:
        return self.state == State.CLOSED

    def next_event(self) -> Event | None:
        return self.events.popleft() if self.events else None

    # ------------------------------------------------------------------ handshake

    def _payload(self) -> bytes:
        if not self._local_max_data:
            self._grant()
        cfg = self.config
        params = PeerParams(
            self._local_max_data,
            cfg.stream_window,
            cfg.max_streams,
            int(cfg.idle_timeout * 1000),
        )
        return identity_payload(self.public_key, params)

    def _start_handshake(self, now: float) -> None:
        assert self._hs is not None
        payload = self._payload() if self.pattern == wire.HandshakePattern.IK else b""
        self._hs_message = self._hs.write_message(payload)
        self._send_initial(now)

    def _send_initial(self, now: float) -> None:
        self._send_handshake(wire.PacketType.INITIAL, self._hs_message, self.remote_address)
        self._hs_timer = now + self._hs_rto

    def _send_handshake(self, ptype: wire.PacketType, message: bytes, addr: Address) -> None:
        """Build, remember (for resends) and queue our next handshake packet."""
        initial = ptype == wire.PacketType.INITIAL
        self._hs_packet = wire.encode_long(
            wire.LongHeader(
                ptype,
                wire.VERSION,
                bytes(wire.CID_LEN) if initial else self.remote_cid,
                self.local_cid,
                token=self._hs_token if initial else b"",
                pattern=self.pattern,
                message=message,
            ),
            pad_to=wire.MIN_INITIAL_SIZE if initial else 0,
        )
        self._queue_raw(self._hs_packet, addr)

    def accept_initial(self, header: wire.LongHeader, addr: Address, size: int, now: float) -> None:
        """Responder: process the INITIAL that created this connection."""
        self.remote_cid = header.scid
        self.bytes_received += size
        self._hs = HandshakeState(
            header.pattern.name, initiator=False, static_private=self._static, prologue=PROLOGUE
        )
        self.pattern = header.pattern
        try:
            payload = self._hs.read_message(header.message)
        except HandshakeError:
            if header.pattern != wire.HandshakePattern.IK:
                raise
            # An IK first message we cannot decrypt: the initiator holds an old key of ours.
            # Its first 32 bytes are its ephemeral key, which is an XX first message: answer
            # with XX message 2; the initiator falls back to XX on the same ephemeral key.
            self._hs = HandshakeState(
                "XX", initiator=False, static_private=self._static, prologue=PROLOGUE
            )
            self.pattern = wire.HandshakePattern.XX
            payload = self._hs.read_message(header.message[:32])
            self.counters["ik_fallback"] = self.counters.get("ik_fallback", 0) + 1
        if self.pattern == wire.HandshakePattern.IK:
            self._set_peer(*check_identity(payload, self._hs.rs))
        self._send_handshake(
            wire.PacketType.HANDSHAKE, self._hs.write_message(self._payload()), addr
        )
        if self._hs.complete:
            self._complete_handshake(now)

    def _set_peer(self, public_key: bytes, params: PeerParams) -> None:
        if self.expected_peer_key is not None and public_key != self.expected_peer_key:
            self.changed_peer_key = public_key
            if not self.accept_key_change:
                raise HandshakeError(
                    f"peer presented key {public_key.hex()} instead of the expected "
                    f"{self.expected_peer_key.hex()}"
                )
            self.counters["peer_key_changed"] = self.counters.get("peer_key_changed", 0) + 1
        self.peer_public_key = public_key
        self._peer_id = node_id_of(public_key)
        self._peer_params = params
        self._peer_max_data = params.max_data
        self._peer_max_streams = params.max_streams

    def _complete_handshake(self, now: float) -> None:
        assert self._hs is not None and self.peer_public_key is not None
        self._send_key, self._recv_key = self._hs.keys()
        self.state = State.ESTABLISHED
        self._hs_timer = None if self._hs_confirmed or not self.initiator else self._hs_timer
        self._last_received = now
        self.events.append(HandshakeCompleted(peer_public_key=self.peer_public_key))
        if not self.initiator:
            self.address_validated = self.address_validated or self.pattern.name == "XX"
            self._hs_confirmed = True
            self._ping_pending = True  # tells the initiator the handshake is done

    def _receive_long(self, data: bytes, addr: Address, now: float) -> None:
        try:
            h = wire.decode_long(data)
        except WireError:
            self.counters["malformed"] += 1
            return
        if h.packet_type == wire.PacketType.RETRY:
            if self.initiator and self.state == State.HANDSHAKE and not self._hs_token:
                self._hs_token = h.token
                self._send_initial(now)
            return
        if h.packet_type == wire.PacketType.INITIAL:
            # the initiator resent its first message: resend our answer within the budget
            if not self.initiator and self._hs_packet is not None and h.scid == self.remote_cid:
                self.bytes_received += len(data)
                self._queue_raw(self._hs_packet, addr)
            return
        if h.packet_type == wire.PacketType.HANDSHAKE and self.initiator:
            if self.state != State.HANDSHAKE:
                if (
                    self.pattern == wire.HandshakePattern.XX
                    and self._hs_packet is not None
                    and (not self._hs_confirmed)
                ):
                    self._queue_raw(self._hs_packet, addr)
                return
            try:
                payload = self._read_handshake(h.message)
                assert self._hs is not None
                self._set_peer(*check_identity(payload, self._hs.rs))
            except HandshakeError as exc:
                self._fail(str(exc), now)
                return
            self.remote_cid = h.scid
            self.address_validated = True
            if self.pattern == wire.HandshakePattern.XX:
                msg3 = self._hs.write_message(self._payload())
                self._send_handshake(wire.PacketType.FINISH, msg3, addr)
                self._hs_rto = K_INITIAL_RTO
                self._hs_timer = now + self._hs_rto
            else:
                self._hs_confirmed = True
                self._hs_timer = None
            self._complete_handshake(now)
            return
        if h.packet_type == wire.PacketType.FINISH and not self.initiator:
            if self.state != State.HANDSHAKE or self._hs is None:
                return
            self.bytes_received += len(data)
            try:
                payload = self._hs.read_message(h.message)
                self._set_peer(*check_identity(payload, self._hs.rs))
            except HandshakeError as exc:
                self._fail(str(exc), now)
                return
            self.address_validated = True
            self._hs_timer = None
            self._complete_handshake(now)

    def _read_handshake(self, message: bytes) -> bytes:
        """Initiator: read message 2; an IK answer that does not decrypt may be XX's.

        A responder that cannot read our IK message (its key changed) answers as if our
        ephemeral key alone had been an XX first message; replaying that message on an XX
        state with the same ephemeral key continues the handshake as XX.
        """
        assert self._hs is not None
        try:
            return self._hs.read_message(message)
        except HandshakeError:
            if self.pattern != wire.HandshakePattern.IK:
                raise
        xx = HandshakeState(
            "XX",
            initiator=True,
            static_private=self._static,
            prologue=PROLOGUE,
            ephemeral_private=self._hs.e,
        )
        xx.write_message(b"")
        payload = xx.read_message(message)
        self._hs = xx
        self.pattern = wire.HandshakePattern.XX
        self.counters["ik_fallback"] = self.counters.get("ik_fallback", 0) + 1
        return payload

    def _fail(self, reason: str, now: float) -> None:
        self.counters["handshake_failed"] = self.counters.get("handshake_failed", 0) + 1
        self.state = State.CLOSED
        self.events.append(
            ConnectionTerminated(error_code=PROTOCOL_VIOLATION, reason=reason, by_peer=False)
        )

    def _queue_raw(self, pkt: bytes, addr: Address) -> None:
        if not self.address_validated and self.bytes_sent + len(pkt) > self.bytes_received:
            self.counters["amplification_blocked"] = (
                self.counters.get("amplification_blocked", 0) + 1
            )
            return
        self.bytes_sent += len(pkt)
        self._out.append((pkt, addr))

    # ------------------------------------------------------------------ receiving

    def receive(self, data: bytes, addr: Address, now: float) -> None:
        """Feed one datagram addressed to this connection. Never raises."""
        if self.state == State.CLOSED:
            return
        try:
            if data[0] & wire.TYPE_MASK != wire.PacketType.DATA:
                self._receive_long(data, addr, now)
            else:
                self._receive_data(data, addr, now)
        except (WireError, HandshakeError, IndexError, ValueError):
            self.counters["malformed"] += 1

    def _receive_data(self, data: bytes, addr: Address, now: float) -> None:
        if self.state == State.HANDSHAKE or not self._recv_key:
            self.counters["early_data_dropped"] = self.counters.get("early_data_dropped", 0) + 1
            return
        if len(data) < _AEAD_OVERHEAD + 1:
            self.counters["malformed"] += 1
            return
        pn = _PN.unpack_from(data, 9)[0]
        phase = 1 if data[0] & wire.KEY_PHASE_BIT else 0
        largest = self._largest_received
        if pn <= largest and (
            largest - pn >= REPLAY_WINDOW or (self._replay_bits >> (largest - pn)) & 1
        ):
            self.counters["replayed"] += 1
            return
        new_key = None
        if phase == self._recv_phase:
            key = self._recv_key
        elif pn < self._recv_phase_start:
            if self._recv_prev_key is None:
                self.counters["auth_failed"] += 1
                return
            key = self._recv_prev_key
        else:
            key = new_key = rekey(self._recv_key)
        try:
            plain = open_(key, _NONCE.pack(pn), data[17:], data[:17])
        except (CryptoError, ValueError, TypeError):
            self.counters["auth_failed"] += 1
            return
        if new_key is not None:
            self._recv_prev_key = self._recv_key
            self._recv_key = new_key
            self._recv_phase ^= 1
            self._recv_phase_start = pn
            self.counters["key_updates"] += 1
        if pn > largest:
            shift = pn - largest
            self._replay_bits = ((self._replay_bits << shift) | 1) & _REPLAY_MASK
            self._largest_received = pn
            self._largest_received_time = now
            if pn != largest + 1:
                self._ack_immediate = True
        else:
            self._replay_bits |= 1 << (largest - pn)
            self._ack_immediate = True
        self._received.add(pn, pn + 1)
        if len(self._received) > wire.MAX_ACK_RANGES:
            self._received.shift()
        c = self.counters
        c["packets_in"] += 1
        c["bytes_in"] += len(data)
        self._last_received = now
        if self.initiator and not self._hs_confirmed:
            self._hs_confirmed = True
            self._hs_timer = None
        self.address_validated = True
        self.bytes_received += len(data)
        if addr != self.remote_address and pn > largest:
            self._probe_path(addr, now)
        if self.state in (State.CLOSING, State.DRAINING):
            if self.state == State.CLOSING:
                self._resend_close(now)
            return
        try:
            eliciting = self._handle_frames(plain, addr, now)
        except WireError as exc:
            c["malformed"] += 1
            self.close(PROTOCOL_VIOLATION, f"malformed frame: {exc}", now=now)
            return
        if eliciting:
            if self._ack_eliciting_pending == 0:
                self._ack_timer = now + self.config.max_ack_delay
            self._ack_eliciting_pending += 1

    def _handle_frames(self, plain: bytes, addr: Address, now: float) -> bool:
        buf = wire.Buffer(plain)
        if buf.eof():
            raise WireError("empty packet payload")
        eliciting = False
        data = buf.data
        while buf.pos < buf.end:
            t = data[buf.pos]
            if t == wire.FrameType.STREAM or t == wire.FrameType.STREAM_FIN:
                buf.pos += 1
                sid, offset, chunk = wire.pull_stream_body(buf)
                self._on_stream(sid, offset, chunk, t == wire.FrameType.STREAM_FIN, now)
                eliciting = True
                continue
            if t == wire.FrameType.ACK:
                buf.pos += 1
                self._on_ack(wire.pull_ack_body(buf), now)
                continue
            frame = wire.pull_frame(buf)
            if isinstance(frame, wire.Padding):
                continue
            eliciting = True
            if isinstance(frame, wire.Ping):
                pass
            elif isinstance(frame, wire.Datagram):
                self.events.append(DatagramReceived(data=frame.data))
            elif isinstance(frame, wire.MaxData):
                if frame.limit > self._peer_max_data:
                    self._peer_max_data = frame.limit
                    for sid, st in self._send_streams.items():
                        if st.has_new():
                            self._schedule(sid)
            elif isinstance(frame, wire.MaxStreamData):
                s = self._send_streams.get(frame.stream_id)
                if s is not None:
                    s.max_data = max(s.max_data, frame.limit)
                    if s.has_new():
                        self._schedule(frame.stream_id)
            elif isinstance(frame, wire.MaxStreams):
                if frame.limit > self._peer_max_streams:
                    self._peer_max_streams = frame.limit
                    self.events.append(StreamsAvailable())
            elif isinstance(frame, wire.ResetStream):
                self._on_reset(frame.stream_id, frame.error_code, frame.final_size)
            elif isinstance(frame, wire.StopSending):
                self._on_stop_sending(frame.stream_id, frame.error_code)
            elif isinstance(frame, wire.PathChallenge):
                if len(self._path_out) < 8:
                    self._path_out.append((wire.PathResponse(frame.data), addr))
            elif isinstance(frame, wire.PathResponse):
                self._on_path_response(frame.data, addr, now)
            elif isinstance(frame, wire.Close):
                self._on_close(frame, now)
                return False
        return eliciting

    # ------------------------------------------------------------------ streams (receive)

    def _stream_index(self, sid: int) -> int:
        return sid >> 1

    def _is_local(self, sid: int) -> bool:
        return (sid & 1) == (0 if self.initiator else 1)

    def _get_recv(self, sid: int) -> RecvStream | None:
        rs = self._recv_streams.get(sid)
        if rs is not None:
            return rs
        if self._is_local(sid):
            if sid in self._send_streams:
                rs = self._recv_streams[sid] = RecvStream(self.config.stream_window)
                return rs
            return None
        index = self._stream_index(sid)
        if index < self._peer_streams_opened:
            return None  # already finished and forgotten
        if index >= self._local_max_streams:
            raise WireError(f"peer opened stream {sid} beyond the stream limit")
        # opening stream `index` implicitly opens the lower ones (RFC 9000 section 3.2)
        for i in range(self._peer_streams_opened, index + 1):
            psid = (i << 1) | (1 if self.initiator else 0)
            self._recv_streams[psid] = RecvStream(self.config.stream_window)
            peer_max = self._peer_params.max_stream_data if self._peer_params else 0
            self._send_streams[psid] = SendStream(peer_max)
            self.events.append(StreamOpened(stream_id=psid))
        self._peer_streams_opened = index + 1
        return self._recv_streams[sid]

    def _on_stream(self, sid: int, offset: int, chunk: bytes, fin: bool, now: float) -> None:
        rs = self._get_recv(sid)
        if rs is None:
            return
        end = offset + len(chunk)
        if end > rs.advertised:
            self.close(FLOW_CONTROL_ERROR, f"stream {sid} data beyond its window", now=now)
            return
        if fin:
            if rs.fin_offset is not None and rs.fin_offset != end:
                raise WireError(f"stream {sid} final size changed")
            rs.fin_offset = end
        if end > rs.highest:
            self._data_received += end - rs.highest
            rs.highest = end
            if self._data_received > self._local_max_data:
                self.close(FLOW_CONTROL_ERROR, "connection data beyond its window", now=now)
                return
        if rs.stopped:
            # the application discards this direction: what arrives counts as consumed
            self._consume(rs, rs.highest - rs.read_offset)
            rs.read_offset = rs.highest
            self._maybe_forget(sid)
            return
        had_eof = rs.finished
        new = rs.insert(offset, chunk)
        if (new or (fin and rs.at_eof())) and not had_eof:
            eof = rs.at_eof()
            if eof:
                rs.finished = True
            # one event until the application reads again (not one per packet), and the end
            if eof or not rs.notified:
                rs.notified = True
                self.events.append(StreamDataReceived(stream_id=sid))

    def _on_reset(self, sid: int, code: int, final_size: int) -> None:
        try:
            rs = self._get_recv(sid)
        except WireError:
            return
        if rs is None or rs.reset_code is not None:
            return
        rs.reset_code = code
        if final_size > rs.highest:
            self._data_received += final_size - rs.highest
            rs.highest = final_size
        self._consume(rs, rs.highest - rs.read_offset)
        rs.read_offset = rs.highest
        rs.ready.clear()
        rs.chunks.clear()
        rs.finished = True
        self.events.append(StreamReset(stream_id=sid, error_code=code))
        self._maybe_forget(sid)

    def _on_stop_sending(self, sid: int, code: int) -> None:
        s = self._send_streams.get(sid)
        if s is None or s.done():
            return
        self.reset_stream(sid, code)
        self.events.append(StreamReset(stream_id=sid, error_code=code))

    def read_stream(self, sid: int, max_bytes: int = -1) -> tuple[bytes, bool]:
        """Take up to ``max_bytes`` readable bytes; the flag is True at the end of the stream."""
        rs = self._recv_streams.get(sid)
        if rs is None:
            return b"", False
        rs.notified = False
        if rs.reset_code is not None:
            rs.eof_read = True
            self._maybe_forget(sid)
            return b"", True
        n = len(rs.ready) if max_bytes < 0 else min(max_bytes, len(rs.ready))
        if n == len(rs.ready):
            data = bytes(rs.ready)
            rs.ready.clear()
        else:
            data = bytes(rs.ready[:n])
            del rs.ready[:n]
        rs.read_offset += n
        self._consume(rs, n)
        window = self.config.stream_window
        if rs.fin_offset is None and rs.advertised - rs.read_offset < window // 2:
            rs.advertised = rs.read_offset + window
            self._max_stream_data_pending.add(sid)
        eof = rs.at_eof() and not rs.ready
        if eof:
            rs.eof_read = True
            self._maybe_forget(sid)
        return data, eof

    def stream_readable(self, sid: int) -> int:
        rs = self._recv_streams.get(sid)
        return len(rs.ready) if rs is not None else 0

    def stop_stream(self, sid: int, code: int = NO_ERROR) -> None:
        """Discard what arrived and what still arrives on ``sid``.

        Unless the peer's data is already complete, STOP_SENDING asks it to stop. Once the
        sending half is done too, the stream is forgotten and its credit returned.
        """
        rs = self._recv_streams.get(sid)
        if rs is None or rs.stopped:
            return
        complete = rs.reset_code is not None or (rs.at_eof() and not rs.chunks)
        rs.stopped = True
        self._consume(rs, rs.highest - rs.read_offset)
        rs.read_offset = rs.highest
        rs.ready.clear()
        rs.chunks.clear()
        if not complete:
            self._control.append(wire.StopSending(sid, code))
        self._maybe_forget(sid)

    def _consume(self, rs: RecvStream, n: int) -> None:
        """``n`` bytes were read or discarded: their budget goes back; more credit is granted
        once less than half of the connection window is left."""
        self._data_consumed += n
        if self._budget_held:
            floor = min(K_WINDOW_FLOOR, self.config.connection_window)
            keep = max(0, self._local_max_data - self._data_consumed - floor)
            if keep < self._budget_held:
                self._budget.give(self._budget_held - keep)
                self._budget_held = keep
        if self._local_max_data - self._data_consumed < self.config.connection_window // 2:
            self._grant()

    def _grant(self) -> None:
        """Raise the connection credit towards ``connection_window``: the floor, plus what
        the shared budget allows."""
        cwin = self.config.connection_window
        floor = min(K_WINDOW_FLOOR, cwin)
        self._budget_held += self._budget.take(cwin - floor - self._budget_held)
        limit = self._data_consumed + floor + self._budget_held
        if limit > self._local_max_data:
            self._local_max_data = limit
            self._max_data_pending = self.state == State.ESTABLISHED

    def release_budget(self) -> None:
        """The session is gone: its share of the receive budget is free."""
        self._budget.give(self._budget_held)
        self._budget_held = 0

    def _maybe_forget(self, sid: int) -> None:
        rs = self._recv_streams.get(sid)
        s = self._send_streams.get(sid)
        # RFC 9000 section 3: the receiving half is done once the application has read the
        # end of the stream, stopped reading, or seen a reset; the sending half once all
        # data and the FIN are acknowledged, or the stream is reset.
        recv_done = rs is None or (
            (rs.reset_code is not None or (rs.at_eof() and not rs.ready))
            and (rs.stopped or rs.eof_read)
        )
        if recv_done and (s is None or s.done()):
            self._recv_streams.pop(sid, None)
            self._send_streams.pop(sid, None)
            if not self._is_local(sid):
                self._peer_streams_done += 1
                self._local_max_streams = self._peer_streams_done + self.config.max_streams
                self._max_streams_pending = True

    # ------------------------------------------------------------------ streams (send)

    def open_stream(self) -> int:
        """Id of a new stream; raises TransportError when the peer's stream limit is reached."""
        if self.state != State.ESTABLISHED:
            raise TransportError("connection is not established")
        sid = self._next_local_stream
        if self._stream_index(sid) >= self._peer_max_streams:
            raise TransportError("peer's stream limit reached")
        self._next_local_stream += 2
        peer_max = self._peer_params.max_stream_data if self._peer_params else 0
        self._send_streams[sid] = SendStream(peer_max)
        self._recv_streams[sid] = RecvStream(self.config.stream_window)
        return sid

    def can_open_stream(self) -> bool:
        return self._stream_index(self._next_local_stream) < self._peer_max_streams

    def send_stream(self, sid: int, data: bytes, fin: bool = False) -> None:
        s = self._send_streams.get(sid)
        if s is None or s.fin_offset is not None or s.reset:
            raise TransportError(f"stream {sid} is not writable")
        if data:
            s.buf += data
        if fin:
            s.fin_offset = s.end
        self._schedule(sid)

    def send_buffered(self, sid: int) -> int:
        """Bytes written to ``sid`` and not yet acknowledged."""
        s = self._send_streams.get(sid)
        return s.buffered if s is not None else 0

    def send_unsent(self, sid: int) -> int:
        """Bytes written to ``sid`` and not yet sent once (what is sent and unacknowledged
        is bounded by the peer's flow-control window)."""
        s = self._send_streams.get(sid)
        return s.end - s.next_offset if s is not None else 0

    def reset_stream(self, sid: int, code: int = NO_ERROR) -> None:
        s = self._send_streams.get(sid)
        if s is None or s.done():
            return
        s.reset = True
        s.retransmit = RangeSet()
        s.buf.clear()
        self._control.append(wire.ResetStream(sid, code, s.next_offset))
        self._maybe_forget(sid)

    def _schedule(self, sid: int) -> None:
        if sid not in self._send_queue:
            self._send_queue.append(sid)

    def send_datagram(self, data: bytes) -> None:
        """Queue an unreliable datagram; too-large ones raise, a full queue drops the oldest."""
        if len(data) > self.max_datagram_payload:
            raise TransportError(
                f"datagram of {len(data)} bytes exceeds {self.max_datagram_payload}"
            )
        if len(self._datagrams) >= K_MAX_DATAGRAMS_QUEUED:
            self._datagrams.popleft()
            self.counters["datagrams_dropped"] = self.counters.get("datagrams_dropped", 0) + 1
        self._datagrams.append(bytes(data))

    @property
    def max_datagram_payload(self) -> int:
        return self.config.max_datagram_size - _AEAD_OVERHEAD - 1 - 2 - 40

    # ------------------------------------------------------------------ ACKs and loss

    def _on_ack(self, ack: wire.Ack, now: float) -> None:
        largest = ack.ranges[0][1]
        if largest >= self._next_pn:
            raise WireError("ACK of a packet never sent")
        if self._pmtu_probe is not None:
            self._pmtu_acked(ack)
        sent = self._sent
        lost = self._lost
        acked_bytes = 0
        newest_sent = float("-inf")
        largest_newly: SentPacket | None = None
        first_pn = next(iter(sent)) if sent else None
        ack_floor = -1
        if lost:
            # packets declared lost that arrived after all: their data needs no resend
            for pn in _covered(sorted(lost), ack.ranges):
                for sid, off, ln, fin in lost.pop(pn):
                    s = self._send_streams.get(sid)
                    if s is not None:
                        s.on_ack(off, ln, fin)
                        self._maybe_forget(sid)
        for lo, hi in ack.ranges:
            if first_pn is None or hi < first_pn:
                continue
            lo = max(lo, first_pn)
            pns: range | list[int] = (
                range(lo, hi + 1) if hi - lo < 2 * len(sent) else [p for p in sent if lo <= p <= hi]
            )
            for pn in pns:
                p = sent.pop(pn, None)
                if p is None:
                    continue
                if largest_newly is None or pn > largest_newly.pn:
                    largest_newly = p
                if p.ack_largest > ack_floor:
                    ack_floor = p.ack_largest
                if p.ack_eliciting:
                    acked_bytes += p.size
                    if p.sent_time > newest_sent:
                        newest_sent = p.sent_time
                if p.streams:
                    for sid, off, ln, fin in p.streams:
                        s = self._send_streams.get(sid)
                        if s is not None:
                            s.on_ack(off, ln, fin)
                            if s.done():
                                self._maybe_forget(sid)
        if largest_newly is None:
            return
        if ack_floor >= 0:
            # RFC 9000 section 13.2.4: the peer has seen an ACK frame of ours up to
            # ack_floor, so packets at or below it need not be acknowledged again: ACK frames
            # stay short instead of carrying every old loss hole (up to 64 ranges)
            self._received.trim_below(min(ack_floor + 1, self._largest_received))
        self.bytes_in_flight -= acked_bytes
        if largest > self._largest_acked:
            self._largest_acked = largest
        if largest_newly.pn == largest and largest_newly.ack_eliciting:
            delay = min(ack.delay_us / 1e6, K_MAX_ACK_DELAY_CC)
            self.ack_delay += K_ALPHA * (delay - self.ack_delay)
            self._update_rtt(now - largest_newly.sent_time, ack.delay_us / 1e6, now)
        if acked_bytes:
            self.cc.on_packets_acked(
                acked_bytes=acked_bytes,
                newest_sent_time=newest_sent,
                bytes_in_flight=self.bytes_in_flight,
                now=now,
            )
            self._rto_backoff = 0
        self._detect_lost(now)
        self._restart_rto(now)

    def _update_rtt(self, latest: float, ack_delay: float, now: float) -> None:
        latest = max(latest, K_GRANULARITY / 10)
        self.min_rtt = min(self.min_rtt, latest)
        adjusted = latest
        if latest - min(ack_delay, self.config.max_ack_delay) >= self.min_rtt:
            adjusted = latest - min(ack_delay, self.config.max_ack_delay)
        self.latest_rtt = adjusted
        if self.smoothed_rtt is None:
            # RFC 6298 section 2.2
            self.smoothed_rtt = adjusted
            self.rttvar = adjusted / 2
        else:
            # RFC 6298 section 2.3
            self.rttvar = (1 - K_BETA) * self.rttvar + K_BETA * abs(self.smoothed_rtt - adjusted)
            self.smoothed_rtt = (1 - K_ALPHA) * self.smoothed_rtt + K_ALPHA * adjusted
        # The controller looks for queues on the path: all of the time the peer held the
        # ACK back (it measures that from the kernel's receive timestamp) is not path delay.
        path_rtt = max(self.min_rtt, latest - min(ack_delay, K_MAX_ACK_DELAY_CC))
        self.cc.on_rtt_measurement(
            latest_rtt=path_rtt, min_rtt=self.min_rtt, smoothed_rtt=self.smoothed_rtt, now=now
        )

    @property
    def rto(self) -> float:
        """RFC 6298 section 2: SRTT + max(G, 4 * RTTVAR), bounded, times the back-off."""
        if self.smoothed_rtt is None:
            base = K_INITIAL_RTO
        else:
            base = self.smoothed_rtt + max(K_GRANULARITY, 4 * self.rttvar)
            base += self.config.max_ack_delay
            base = max(base, K_MIN_RTO)
        return min(base * (1 << self._rto_backoff), K_MAX_RTO)

    def _restart_rto(self, now: float) -> None:
        self._rto_deadline = now + self.rto if self._sent else None

    def _detect_lost(self, now: float) -> None:
        """RFC 9002 section 6.1: packet and time thresholds behind the largest acknowledged."""
        srtt = self.smoothed_rtt or K_INITIAL_RTO
        loss_delay = max(K_TIME_THRESHOLD * max(self.latest_rtt, srtt), K_GRANULARITY)
        largest = self._largest_acked
        self._loss_time = None
        lost: list[SentPacket] = []
        for pn, p in self._sent.items():
            if pn > largest:
                break
            if pn <= largest - K_PACKET_THRESHOLD or p.sent_time + loss_delay <= now:
                lost.append(p)
            else:
                self._loss_time = p.sent_time + loss_delay
                break
        if lost:
            self._on_lost(lost, now)

    def _on_lost(self, packets: list[SentPacket], now: float) -> None:
        lost_bytes = 0
        newest = float("-inf")
        for p in packets:
            del self._sent[p.pn]
            if p.ack_eliciting:
                lost_bytes += p.size
                newest = max(newest, p.sent_time)
            if p.streams:
                self._lost[p.pn] = p.streams
                for sid, off, ln, fin in p.streams:
                    s = self._send_streams.get(sid)
                    if s is not None:
                        s.on_lost(off, ln, fin)
                        self._schedule(sid)
            if p.frames:
                for f in p.frames:
                    self._requeue(f)
        while len(self._lost) > K_LOST_MEMORY:
            del self._lost[next(iter(self._lost))]
        self.counters["lost"] += len(packets)
        self.bytes_in_flight -= lost_bytes
        if lost_bytes:
            self.cc.on_packets_lost(
                lost_bytes=lost_bytes,
                newest_sent_time=newest,
                bytes_in_flight=self.bytes_in_flight,
                now=now,
            )

    def _requeue(self, f: wire.Frame) -> None:
        if isinstance(f, wire.MaxData):
            self._max_data_pending = True
        elif isinstance(f, wire.MaxStreamData):
            if f.stream_id in self._recv_streams:
                self._max_stream_data_pending.add(f.stream_id)
        elif isinstance(f, wire.MaxStreams):
            self._max_streams_pending = True
        elif isinstance(f, wire.ResetStream | wire.StopSending):
            self._control.append(f)

    def _on_rto(self, now: float) -> None:
        """RFC 6298 section 5.4-5.6: back off, collapse the window, resend the oldest data."""
        self.counters["rto"] += 1
        self._rto_backoff = min(self._rto_backoff + 1, K_MAX_BACKOFF)
        if self._rto_backoff >= 2 and self.max_datagram_size > self.config.max_datagram_size:
            # RFC 8899 section 4.3: a path that stopped carrying the probed size (a new
            # tunnel, a route change) shows as timeouts in a row; back to the base size,
            # which the resent data then uses, and probe again later
            self._restart_pmtu()
            self._pmtu_next = now + K_PMTU_AGAIN
            self.counters["pmtu_black_holes"] = self.counters.get("pmtu_black_holes", 0) + 1
        self.cc.on_retransmission_timeout(now=now)
        outstanding = list(self._sent.values())
        if outstanding:
            # Everything outstanding leaves the flight; its data is queued again and goes out
            # under the collapsed window, skipping whatever late ACKs prove delivered.
            lost_bytes = sum(p.size for p in outstanding if p.ack_eliciting)
            for p in outstanding:
                del self._sent[p.pn]
                if p.streams:
                    self._lost[p.pn] = p.streams
                    for sid, off, ln, fin in p.streams:
                        s = self._send_streams.get(sid)
                        if s is not None:
                            s.on_lost(off, ln, fin)
                            self._schedule(sid)
                if p.frames:
                    for f in p.frames:
                        self._requeue(f)
            self.bytes_in_flight -= lost_bytes
            self.counters["lost"] += len(outstanding)
        self._probe_packets = 2
        self._ping_pending = True
        self._rto_deadline = now + self.rto

    # ------------------------------------------------------------------ paths

    def _probe_path(self, addr: Address, now: float) -> None:
        """Challenge a new address the peer's packets come from (RFC 9000 section 8.2)."""
        for a, at in self._challenges.values():
            if a == addr and now - at < self.rto:
                return
        while len(self._challenges) >= 4:
            del self._challenges[next(iter(self._challenges))]
        token = os.urandom(8)
        self._challenges[token] = (addr, now)
        self._path_out.append((wire.PathChallenge(token), addr))

    def _on_path_response(self, token: bytes, addr: Address, now: float) -> None:
        entry = self._challenges.pop(token, None)
        if entry is None or entry[0] != addr:
            return
        self._challenges.clear()
        if addr != self.remote_address:
            if addr[0] != self.remote_address[0]:
                # a new network path: start its congestion state and RTT afresh
                self.cc = create_congestion_control(
                    self.config.congestion, max_datagram_size=self.config.max_datagram_size
                )
                self.smoothed_rtt = None
                self.min_rtt = float("inf")
                self._restart_pmtu()
            self.remote_address = addr
            self.events.append(PathChanged(address=addr))

    def change_address(self, addr: Address) -> None:
        """Send from now on to ``addr`` (a path chosen locally, e.g. a relay); probes it."""
        self.remote_address = addr
        self._ping_pending = True
        self._restart_pmtu()

    # ------------------------------------------------------------------ path MTU

    def _restart_pmtu(self) -> None:
        """A new path: back to the base size, and probe it afresh."""
        self._set_datagram_size(self.config.max_datagram_size)
        self._pmtu_probe = None
        self._pmtu_failures = 0
        self._pmtu_next = 0.0

    def _set_datagram_size(self, size: int) -> None:
        """Packets of ``size`` bytes from now on, for the sender and its congestion control."""
        self.max_datagram_size = size
        self.cc.max_datagram_size = size

    def _pmtu_acked(self, ack: wire.Ack) -> None:
        """Settle the outstanding probe if this ACK shows its fate: acknowledged (the path
        carries the size), or a gap where it was with K_PACKET_THRESHOLD packets
        acknowledged after it (lost)."""
        assert self._pmtu_probe is not None
        pn = self._pmtu_probe[0]
        if any(lo <= pn <= hi for lo, hi in ack.ranges):
            self._pmtu_probe = None
            self._set_datagram_size(self.config.pmtu_probe_size)
            self.counters["pmtu"] = self.max_datagram_size
        elif ack.ranges[-1][0] <= pn and ack.ranges[0][1] >= pn + K_PACKET_THRESHOLD:
            self._pmtu_lost(self._pmtu_probe[1])

    def _pmtu_lost(self, now: float) -> None:
        self._pmtu_probe = None
        self._pmtu_failures += 1
        self._pmtu_next = now + max(K_PMTU_RETRY, 3 * (self.smoothed_rtt or 0.0))
        self.counters["pmtu_probes_lost"] = self.counters.get("pmtu_probes_lost", 0) + 1

    def _pmtu_probe_due(self, now: float) -> bool:
        size = self.config.pmtu_probe_size
        if size <= self.max_datagram_size or self._pmtu_failures >= K_PMTU_PROBES:
            return False
        if self._pmtu_probe is not None:
            # unanswered for 3 RTTs (nothing else in flight to show the gap): lost
            if now - self._pmtu_probe[1] > 3 * (self.smoothed_rtt or K_INITIAL_RTO):
                self._pmtu_lost(now)
            return False
        return now >= self._pmtu_next and self.address_validated and self.smoothed_rtt is not None

    def _pmtu_packet(self, now: float) -> bytes:
        """PING and PADDING filling a packet of exactly the probe size."""
        pad = self.config.pmtu_probe_size - _AEAD_OVERHEAD - 1
        self._pmtu_probe = (self._next_pn, now)
        self.counters["pmtu_probes"] = self.counters.get("pmtu_probes", 0) + 1
        return self._seal(bytes([wire.FrameType.PING]) + bytes(pad), now)

    # ------------------------------------------------------------------ closing

    def close(self, error_code: int = NO_ERROR, reason: str = "", *, now: float) -> None:
        if self.state in (State.CLOSING, State.DRAINING, State.CLOSED):
            return
        if self.state == State.HANDSHAKE:
            self.state = State.CLOSED
            self.events.append(
                ConnectionTerminated(error_code=error_code, reason=reason, by_peer=False)
            )
            return
        self.state = State.CLOSING
        self._close_frame = wire.Close(error_code, reason)
        self._close_deadline = now + 3 * self.rto
        self._close_sent_at = float("-inf")
        self.events.append(
            ConnectionTerminated(error_code=error_code, reason=reason, by_peer=False)
        )

    def _resend_close(self, now: float) -> None:
        if now - self._close_sent_at > (self.smoothed_rtt or 0.1):
            self._close_sent_at = float("-inf")

    def _on_close(self, frame: wire.Close, now: float) -> None:
        if self.state == State.CLOSING:
            self.state = State.DRAINING
            return
        self.state = State.DRAINING
        self._close_deadline = now + 3 * self.rto
        self.events.append(
            ConnectionTerminated(error_code=frame.error_code, reason=frame.reason, by_peer=True)
        )

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        if self.state == State.CLOSED:
            return None
        if self.state in (State.CLOSING, State.DRAINING):
            return self._close_deadline
        if self.state == State.HANDSHAKE:
            deadline = self.created + self.config.handshake_timeout
            return min(deadline, self._hs_timer) if self._hs_timer is not None else deadline
        t = self._last_received + self.idle_timeout
        for x in (
            self._ack_timer if self._ack_eliciting_pending else None,
            self._loss_time,
            self._rto_deadline,
            self._pacing_timer,
            self._hs_timer,
            self._last_sent_eliciting + self.config.keepalive_interval,
        ):
            if x is not None and x < t:
                t = x
        return t

    @property
    def idle_timeout(self) -> float:
        peer = self._peer_params.idle_timeout_ms / 1000 if self._peer_params else 0
        mine = self.config.idle_timeout
        return min(mine, peer) if peer > 0 else mine

    def handle_timer(self, now: float) -> None:
        if self.state == State.CLOSED:
            return
        if self.state in (State.CLOSING, State.DRAINING):
            if self._close_deadline is not None and now >= self._close_deadline:
                self.state = State.CLOSED
            return
        if self.state == State.HANDSHAKE:
            if now >= self.created + self.config.handshake_timeout:
                self.state = State.CLOSED
                self.events.append(
                    ConnectionTerminated(
                        error_code=IDLE_TIMEOUT, reason="handshake timed out", by_peer=False
                    )
                )
                return
            if self._hs_timer is not None and now >= self._hs_timer and self.initiator:
                assert self._hs_packet is not None
                self._queue_raw(self._hs_packet, self.remote_address)
                self._hs_rto = min(self._hs_rto * 2, K_MAX_RTO)
                self._hs_timer = now + self._hs_rto
            return
        if now >= self._last_received + self.idle_timeout:
            self.state = State.CLOSED
            self.events.append(
                ConnectionTerminated(error_code=IDLE_TIMEOUT, reason="idle timeout", by_peer=False)
            )
            return
        if self._hs_timer is not None and now >= self._hs_timer and self._hs_packet is not None:
            self._queue_raw(self._hs_packet, self.remote_address)
            self._hs_rto = min(self._hs_rto * 2, K_MAX_RTO)
            self._hs_timer = now + self._hs_rto
        if self._loss_time is not None and now >= self._loss_time:
            self._detect_lost(now)
            self._restart_rto(now)
        elif self._rto_deadline is not None and now >= self._rto_deadline:
            self._on_rto(now)
        if now >= self._last_sent_eliciting + self.config.keepalive_interval:
            self._ping_pending = True
        if self._pacing_timer is not None and now >= self._pacing_timer:
            self._pacing_timer = None

    # ------------------------------------------------------------------ sending

    def _seal(self, payload: bytes | bytearray, now: float) -> bytes:
        pn = self._next_pn
        self._next_pn = pn + 1
        if pn - self._send_phase_start >= self.config.key_update_interval:
            self._send_key = rekey(self._send_key)
            self._send_phase ^= 1
            self._send_phase_start = pn
            self.counters["key_updates"] += 1
        header = _SHORT_FIRST[self._send_phase] + self.remote_cid + _PN.pack(pn)
        return header + seal(self._send_key, _NONCE.pack(pn), bytes(payload), header)

    def _ack_frame(self, buf: wire.Buffer, now: float) -> None:
        ranges = [(a, b - 1) for a, b in reversed(self._received.ranges())]
        delay = int(max(0.0, now - self._largest_received_time) * 1e6)
        wire.push_ack(buf, ranges, delay)
        self._ack_eliciting_pending = 0
        self._ack_immediate = False
        self._ack_timer = None

    def datagrams_to_send(
        self, now: float, transmit: Transmit | None = None
    ) -> list[tuple[bytes, Address]]:
        """Everything ready to go out now, as (datagram, address) pairs.

        With ``transmit`` (an endpoint's socket send and its clock), each packet of data
        and ACKs goes out as soon as it is sealed and is dated when it does (after what was
        queued before it), and only the rest is returned: a packet dated at the start of a
        long batch and sent at its end would read as queueing delay in its RTT sample.
        """
        out = self._out
        self._out = []
        if self.state == State.CLOSED or not self._send_key:
            return out
        addr = self.remote_address
        mds = self.max_datagram_size
        if self.state == State.CLOSING:
            if self._close_sent_at == float("-inf") and self._close_frame is not None:
                buf = wire.Buffer()
                wire.push_frame(buf, self._close_frame)
                out.append((self._seal(buf.data, now), addr))
                self._close_sent_at = now
            return out
        if self.state != State.ESTABLISHED:
            return out
        # path probes and responses go to the path they concern
        if self._path_out:
            for frame, paddr in self._path_out:
                out.append((self._seal(self._single(frame), now), paddr))
            self._path_out.clear()
        if self._pmtu_probe_due(now):
            out.append((self._pmtu_packet(now), addr))
        if not (self._ack_eliciting_pending or self._ack_immediate or self._has_payload()):
            return out
        if transmit is not None:
            # what is already queued (the handshake's last message, path probes) goes
            # first: data sealed with the new keys must not overtake the message that
            # lets the peer derive them
            for pkt, paddr in out:
                transmit.send(pkt, paddr)
            out = []
        cc = self.cc
        srtt = self.smoothed_rtt or K_INITIAL_RTO / 3
        rate = cc.pacing_rate(srtt)
        if self.rate_cap is not None:
            rate = min(rate, self.rate_cap)
        # When pacing held packets back and the process woke late (a busy host), the link
        # has drained meanwhile: the credit of that time is kept (up to half an RTT) instead
        # of lost, so a sender that is scheduled late does not fall below the pacing rate.
        window = min(srtt / 2, K_PACING_CATCHUP) if self._paced else K_PACING_WINDOW
        budget_cap = max(K_PACING_BURST * mds, rate * window)
        self._pacing_budget = min(
            budget_cap, self._pacing_budget + (now - self._pacing_time) * rate
        )
        self._pacing_time = now
        self._pacing_timer = None
        self._paced = False
        window = cc.congestion_window
        counters = self.counters
        while True:
            if not self.address_validated and self.bytes_sent + mds > self.bytes_received:
                break
            pending = self._ack_eliciting_pending
            ack_due = (
                pending >= 2
                or self._ack_immediate
                or (pending > 0 and self._ack_timer is not None and now >= self._ack_timer)
            )
            has_payload = self._has_payload()
            room = window - self.bytes_in_flight
            can_send = has_payload and (room >= mds or self._probe_packets > 0)
            if can_send and self._pacing_budget < mds - 1 and self._probe_packets == 0:
                self._pacing_timer = now + max((mds - self._pacing_budget) / rate, K_PACING_TICK)
                self._paced = True
                can_send = False
                counters["pacing_waits"] += 1
            elif room < mds and has_payload:
                counters["cwnd_limited"] += 1
            if not can_send and not ack_due:
                break
            buf = wire.Buffer()
            has_ack = bool(ack_due or self._ack_eliciting_pending)
            if has_ack:
                self._ack_frame(buf, now)
            streams: list[tuple[int, int, int, bool]] | None = None
            frames: list[wire.Frame] | None = None
            eliciting = False
            if can_send:
                frames, streams, eliciting = self._fill(buf, mds - _AEAD_OVERHEAD)
            if not buf.data:
                break
            if (
                has_ack
                and not eliciting
                and len(self._received) > K_ACK_RANGES_PING
                and now - self._ack_ping_at >= (self.smoothed_rtt or K_INITIAL_RTO)
            ):
                # a receiver that only sends ACKs makes one of them ack-eliciting about
                # once per round trip, so the peer's ACK of it lets old ranges go
                buf.push_uint8(wire.FrameType.PING)
                eliciting = True
                self._ack_ping_at = now
            payload = buf.data
            pn = self._next_pn
            if transmit is not None:
                now = transmit.clock()
            pkt = self._seal(payload, now)
            if transmit is not None:
                transmit.send(pkt, addr)
            else:
                out.append((pkt, addr))
            size = len(pkt)
            self.bytes_sent += size
            counters["packets_out"] += 1
            counters["bytes_out"] += size
            if eliciting:
                sent_packet = self._sent[pn] = SentPacket(pn, now, size, True, streams, frames)
                if has_ack:
                    sent_packet.ack_largest = self._largest_received
                self.bytes_in_flight += size
                cc.on_packet_sent(size=size, now=now)
                self._last_sent_eliciting = now
                if self._rto_deadline is None:
                    self._rto_deadline = now + self.rto
                if self._probe_packets:
                    self._probe_packets -= 1
                else:
                    self._pacing_budget -= size
            elif not can_send:
                break
        return out

    def _single(self, frame: wire.Frame) -> bytes:
        buf = wire.Buffer()
        wire.push_frame(buf, frame)
        return bytes(buf.data)

    def send_pending(self) -> bool:
        """Whether stream data, datagrams or control frames wait to be sent."""
        return self._has_payload()

    def _has_payload(self) -> bool:
        return bool(
            self._send_queue
            or self._control
            or self._datagrams
            or self._ping_pending
            or self._max_data_pending
            or self._max_stream_data_pending
            or self._max_streams_pending
        )

    def _fill(
        self, buf: wire.Buffer, space: int
    ) -> tuple[list[wire.Frame] | None, list[tuple[int, int, int, bool]] | None, bool]:
        frames: list[wire.Frame] = []
        if (
            self._max_data_pending
            or self._max_streams_pending
            or self._max_stream_data_pending
            or self._control
        ):
            self._fill_control(frames)
            for f in frames:
                wire.push_frame(buf, f)
        eliciting = bool(frames)
        if self._ping_pending:
            self._ping_pending = False
            buf.push_uint8(wire.FrameType.PING)
            eliciting = True
        while self._datagrams and space - len(buf.data) > len(self._datagrams[0]) + 3:
            d = self._datagrams.popleft()
            buf.push_uint8(wire.FrameType.DATAGRAM)
            buf.push_varint(len(d))
            buf.push_bytes(d)
            eliciting = True
        streams: list[tuple[int, int, int, bool]] = []
        queue = self._send_queue
        tries = len(queue)
        while queue and tries > 0 and space - len(buf.data) > 24:
            tries -= 1
            sid = queue[0]
            s = self._send_streams.get(sid)
            if s is None or s.reset:
                queue.popleft()
                continue
            wrote = self._fill_stream(sid, s, buf, space, streams)
            if not wrote:
                queue.popleft()
                continue
            if not s.retransmit and not s.has_new():
                queue.popleft()
            elif len(queue) > 1:
                queue.rotate(-1)
        if streams:
            eliciting = True
        return (frames or None), (streams or None), eliciting

    def _fill_control(self, frames: list[wire.Frame]) -> None:
        if self._max_data_pending:
            self._max_data_pending = False
            frames.append(wire.MaxData(self._local_max_data))
        if self._max_streams_pending:
            self._max_streams_pending = False
            frames.append(wire.MaxStreams(self._local_max_streams))
        while self._max_stream_data_pending and len(frames) < 16:
            sid = self._max_stream_data_pending.pop()
            rs = self._recv_streams.get(sid)
            if rs is not None:
                frames.append(wire.MaxStreamData(sid, rs.advertised))
        while self._control and len(frames) < 32:
            frames.append(self._control.pop(0))

    def _fill_stream(
        self,
        sid: int,
        s: SendStream,
        buf: wire.Buffer,
        space: int,
        streams: list[tuple[int, int, int, bool]],
    ) -> bool:
        wrote = False
        while s.retransmit and space - len(buf.data) > 24:
            start, stop = s.retransmit.first()
            if start < s.base:
                s.retransmit.subtract(start, s.base)
                continue
            avail = space - len(buf.data) - wire.stream_header_size(sid, start, stop - start)
            n = min(stop - start, avail)
            if n <= 0:
                break
            fin = s.fin_offset is not None and start + n == s.fin_offset
            wire.push_stream_header(buf, sid, start, n, fin)
            buf.push_bytes(s.data(start, n))
            s.retransmit.subtract(start, start + n)
            streams.append((sid, start, n, fin))
            if fin:
                s.fin_sent = True
            wrote = True
        if s.retransmit:
            return wrote
        limit = min(s.end, s.max_data, s.next_offset + (self._peer_max_data - self._data_sent))
        n = limit - s.next_offset
        fin_pending = s.fin_offset is not None and not s.fin_sent
        if n <= 0 and not (fin_pending and s.next_offset == s.fin_offset):
            return wrote
        off = s.next_offset
        avail = space - len(buf.data) - wire.stream_header_size(sid, off, max(n, 0))
        n = max(0, min(n, avail))
        fin = s.fin_offset is not None and off + n == s.fin_offset
        if n == 0 and not fin:
            return wrote
        wire.push_stream_header(buf, sid, off, n, fin)
        if n:
            i = off - s.base
            buf.data += s.buf[i : i + n]
        s.next_offset = off + n
        self._data_sent += n
        streams.append((sid, off, n, fin))
        if fin:
            s.fin_sent = True
        return True

    # ------------------------------------------------------------------ status

    def status(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "rtt_ms": round(self.smoothed_rtt * 1000, 2) if self.smoothed_rtt else None,
            "ack_delay_ms": round(self.ack_delay * 1000, 2),
            "streams": len(self._send_streams),
            "bytes_in_flight": self.bytes_in_flight,
            "datagram_size": self.max_datagram_size,
            "cc": self.cc.status(),
            **self.counters,
        }
