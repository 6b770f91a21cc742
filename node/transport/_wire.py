"""Wire codec: packet headers and frames, as matching ``pull_*``/``push_*`` functions.

Every packet is one UDP datagram. The first byte has its top bit set (so it can never be taken
for STUN, whose first two bits are zero), the key-phase bit at 0x10 and the packet type in the
low nibble. Handshake packets carry a long header (version, both connection ids); data packets
a short one (destination connection id, 64-bit packet number) followed by the AEAD-sealed
frames. Integers inside frames are QUIC variable-length integers (RFC 9000 section 16).

Every length and count read from the wire is checked against the bytes left and against a
fixed bound before it is used; anything wrong raises :class:`WireError` and nothing else.
docs/transport.md is the normative description.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from node.transport.errors import WireError

VERSION = 1
CID_LEN = 8
PN_LEN = 8
TAG_LEN = 16
SHORT_HEADER_LEN = 1 + CID_LEN + PN_LEN
LONG_HEADER_LEN = 1 + 1 + CID_LEN + CID_LEN
MIN_INITIAL_SIZE = 1200
MAX_DATAGRAM_SIZE = 1452
MAX_TOKEN_LEN = 64
MAX_NOISE_MESSAGE = 1024
MAX_ACK_RANGES = 64
MAX_REASON_LEN = 256
MAX_VARINT = (1 << 62) - 1

FIXED_BIT = 0x80
KEY_PHASE_BIT = 0x10
TYPE_MASK = 0x0F


class PacketType(IntEnum):
    """Low nibble of the first byte."""

    INITIAL = 1
    RETRY = 2
    HANDSHAKE = 3
    FINISH = 4
    DATA = 5


class HandshakePattern(IntEnum):
    """Which Noise pattern an INITIAL starts."""

    XX = 0
    IK = 1


class FrameType(IntEnum):
    PADDING = 0x00
    PING = 0x01
    ACK = 0x02
    RESET_STREAM = 0x04
    STOP_SENDING = 0x05
    MAX_DATA = 0x06
    MAX_STREAM_DATA = 0x07
    MAX_STREAMS = 0x08
    STREAM = 0x10
    STREAM_FIN = 0x11
    DATAGRAM = 0x20
    PATH_CHALLENGE = 0x30
    PATH_RESPONSE = 0x31
    CLOSE = 0x40


class Buffer:
    """Bytes read from a cursor (``pull_*``) or appended to (``push_*``).

    Built from ``bytes`` it is read-only; built empty it is a ``bytearray`` to push into.
    """

    __slots__ = ("data", "end", "pos")

    def __init__(self, data: bytes | bytearray | memoryview | None = None) -> None:
        self.data: bytes | bytearray = bytearray() if data is None else bytes(data)
        self.pos = 0
        self.end = len(self.data)

    def eof(self) -> bool:
        return self.pos >= self.end

    def remaining(self) -> int:
        return self.end - self.pos

    def pull_bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.end:
            raise WireError(f"truncated: wanted {n} bytes at offset {self.pos}, have {self.end}")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return bytes(out)

    def pull_uint8(self) -> int:
        if self.pos >= self.end:
            raise WireError(f"truncated: wanted 1 byte at offset {self.pos}")
        v = self.data[self.pos]
        self.pos += 1
        return v

    def pull_uint16(self) -> int:
        return int.from_bytes(self.pull_bytes(2), "big")

    def pull_uint64(self) -> int:
        return int.from_bytes(self.pull_bytes(8), "big")

    def pull_varint(self) -> int:
        pos = self.pos
        if pos >= self.end:
            raise WireError(f"truncated: wanted a varint at offset {pos}")
        first = self.data[pos]
        n = 1 << (first >> 6)
        if pos + n > self.end:
            raise WireError(f"truncated: varint of {n} bytes at offset {pos}")
        self.pos = pos + n
        if n == 1:
            return first
        return int.from_bytes(self.data[pos : pos + n], "big") & ((1 << (8 * n - 2)) - 1)

    def pull_varint_max(self, limit: int, what: str) -> int:
        v = self.pull_varint()
        if v > limit:
            raise WireError(f"{what} {v} exceeds the limit {limit}")
        return v

    def _out(self) -> bytearray:
        if not isinstance(self.data, bytearray):
            raise TypeError("push into a read-only Buffer")
        return self.data

    def push_bytes(self, b: bytes | bytearray | memoryview) -> None:
        self._out().extend(b)

    def push_uint8(self, v: int) -> None:
        self._out().append(v)

    def push_uint16(self, v: int) -> None:
        self._out().extend(v.to_bytes(2, "big"))

    def push_uint64(self, v: int) -> None:
        self._out().extend(v.to_bytes(8, "big"))

    def push_varint(self, v: int) -> None:
        self._out().extend(encode_varint(v))


def encode_varint(v: int) -> bytes:
    """QUIC variable-length integer (RFC 9000 section 16)."""
    if v < 0x40:
        return bytes((v,))
    if v < 0x4000:
        return (v | 0x4000).to_bytes(2, "big")
    if v < 0x40000000:
        return (v | 0x80000000).to_bytes(4, "big")
    if v <= MAX_VARINT:
        return (v | 0xC000000000000000).to_bytes(8, "big")
    raise ValueError(f"varint {v} out of range")


def varint_size(v: int) -> int:
    return 1 if v < 0x40 else 2 if v < 0x4000 else 4 if v < 0x40000000 else 8


# ---------------------------------------------------------------- headers


@dataclass(frozen=True, slots=True)
class LongHeader:
    """Header of INITIAL, RETRY, HANDSHAKE and FINISH packets, with their body."""

    packet_type: PacketType
    version: int
    dcid: bytes
    scid: bytes
    token: bytes = b""
    """INITIAL and RETRY: the address-validation cookie (may be empty in INITIAL)."""
    pattern: HandshakePattern = HandshakePattern.XX
    """INITIAL only."""
    message: bytes = b""
    """The Noise handshake message (not in RETRY)."""


def packet_type_of(data: bytes | bytearray | memoryview) -> PacketType | None:
    """The type of a datagram if it looks like ours, else None (never raises)."""
    if not data or not data[0] & FIXED_BIT:
        return None
    try:
        return PacketType(data[0] & TYPE_MASK)
    except ValueError:
        return None


def push_long_header(buf: Buffer, h: LongHeader) -> None:
    buf.push_uint8(FIXED_BIT | h.packet_type)
    buf.push_uint8(h.version)
    buf.push_bytes(h.dcid)
    buf.push_bytes(h.scid)
    if h.packet_type in (PacketType.INITIAL, PacketType.RETRY):
        if len(h.token) > MAX_TOKEN_LEN:
            raise ValueError("token too long")
        buf.push_uint8(len(h.token))
        buf.push_bytes(h.token)
    if h.packet_type == PacketType.INITIAL:
        buf.push_uint8(h.pattern)
    if h.packet_type != PacketType.RETRY:
        if len(h.message) > MAX_NOISE_MESSAGE:
            raise ValueError("handshake message too long")
        buf.push_uint16(len(h.message))
        buf.push_bytes(h.message)


def encode_long(h: LongHeader, pad_to: int = 0) -> bytes:
    buf = Buffer()
    push_long_header(buf, h)
    out = buf.data
    if len(out) < pad_to:
        out += bytes(pad_to - len(out))
    return bytes(out)


def pull_long_header(buf: Buffer) -> LongHeader:
    first = buf.pull_uint8()
    if not first & FIXED_BIT:
        raise WireError("not a transport packet (fixed bit clear)")
    try:
        ptype = PacketType(first & TYPE_MASK)
    except ValueError:
        raise WireError(f"unknown packet type {first & TYPE_MASK}") from None
    if ptype == PacketType.DATA:
        raise WireError("a DATA packet has no long header")
    version = buf.pull_uint8()
    dcid = buf.pull_bytes(CID_LEN)
    scid = buf.pull_bytes(CID_LEN)
    token = b""
    pattern = HandshakePattern.XX
    message = b""
    if ptype in (PacketType.INITIAL, PacketType.RETRY):
        token = buf.pull_bytes(buf.pull_uint8())
        if len(token) > MAX_TOKEN_LEN:
            raise WireError(f"token of {len(token)} bytes exceeds {MAX_TOKEN_LEN}")
    if ptype == PacketType.INITIAL:
        try:
            pattern = HandshakePattern(buf.pull_uint8())
        except ValueError:
            raise WireError("unknown handshake pattern") from None
    if ptype != PacketType.RETRY:
        n = buf.pull_uint16()
        if n > MAX_NOISE_MESSAGE:
            raise WireError(f"handshake message of {n} bytes exceeds {MAX_NOISE_MESSAGE}")
        message = buf.pull_bytes(n)
    return LongHeader(ptype, version, dcid, scid, token, pattern, message)


def decode_long(data: bytes | bytearray | memoryview) -> LongHeader:
    """Parse a handshake packet; trailing bytes (padding) are allowed in INITIAL only."""
    buf = Buffer(data)
    h = pull_long_header(buf)
    if not buf.eof() and h.packet_type != PacketType.INITIAL:
        raise WireError(f"{buf.remaining()} trailing bytes after a {h.packet_type.name} packet")
    return h


def short_header(dcid: bytes, pn: int, key_phase: int) -> bytes:
    return (
        bytes((FIXED_BIT | (KEY_PHASE_BIT if key_phase else 0) | PacketType.DATA,))
        + dcid
        + pn.to_bytes(PN_LEN, "big")
    )


def pull_short_header(data: bytes | bytearray | memoryview) -> tuple[bytes, int, int]:
    """(dcid, packet number, key phase) of a DATA packet."""
    if len(data) < SHORT_HEADER_LEN + TAG_LEN:
        raise WireError(f"DATA packet of {len(data)} bytes is shorter than its header and tag")
    first = data[0]
    if first & (FIXED_BIT | TYPE_MASK) != FIXED_BIT | PacketType.DATA:
        raise WireError("not a DATA packet")
    dcid = bytes(data[1 : 1 + CID_LEN])
    pn = int.from_bytes(data[1 + CID_LEN : SHORT_HEADER_LEN], "big")
    return dcid, pn, 1 if first & KEY_PHASE_BIT else 0


# ---------------------------------------------------------------- frames


class Frame:
    """Base class of frames."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Padding(Frame):
    length: int
    """Number of zero bytes."""


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    pass


@dataclass(frozen=True, slots=True)
class Ack(Frame):
    """Selective ACK: ``ranges`` are inclusive ``(first, last)`` packet numbers, descending.

    On the wire: largest, delay, count of extra ranges, length of the first range (below
    largest), then per extra range the gap to the previous one and its length (RFC 9000 19.3).
    """

    ranges: tuple[tuple[int, int], ...]
    delay_us: int = 0
    """How long the receiver held the ACK back, microseconds."""

    @property
    def largest(self) -> int:
        return self.ranges[0][1]


@dataclass(frozen=True, slots=True)
class ResetStream(Frame):
    stream_id: int
    error_code: int
    final_size: int


@dataclass(frozen=True, slots=True)
class StopSending(Frame):
    stream_id: int
    error_code: int


@dataclass(frozen=True, slots=True)
class MaxData(Frame):
    limit: int


@dataclass(frozen=True, slots=True)
class MaxStreamData(Frame):
    stream_id: int
    limit: int


@dataclass(frozen=True, slots=True)
class MaxStreams(Frame):
    limit: int


@dataclass(frozen=True, slots=True)
class Stream(Frame):
    stream_id: int
    offset: int
    data: bytes
    fin: bool = False


@dataclass(frozen=True, slots=True)
class Datagram(Frame):
    data: bytes


@dataclass(frozen=True, slots=True)
class PathChallenge(Frame):
    data: bytes
    """8 random bytes."""


@dataclass(frozen=True, slots=True)
class PathResponse(Frame):
    data: bytes


@dataclass(frozen=True, slots=True)
class Close(Frame):
    error_code: int
    reason: str = ""


def push_ack(
    buf: Buffer, ranges: tuple[tuple[int, int], ...] | list[tuple[int, int]], delay_us: int
) -> None:
    first, last = ranges[0]
    buf.push_uint8(FrameType.ACK)
    buf.push_varint(last)
    buf.push_varint(delay_us)
    buf.push_varint(len(ranges) - 1)
    buf.push_varint(last - first)
    prev_first = first
    for lo, hi in ranges[1:]:
        buf.push_varint(prev_first - hi - 2)
        buf.push_varint(hi - lo)
        prev_first = lo


def pull_ack_body(buf: Buffer) -> Ack:
    largest = buf.pull_varint()
    delay = buf.pull_varint()
    count = buf.pull_varint_max(MAX_ACK_RANGES - 1, "ACK range count")
    length = buf.pull_varint()
    if length > largest:
        raise WireError("ACK range reaches below packet number 0")
    lo = largest - length
    ranges = [(lo, largest)]
    for _ in range(count):
        gap = buf.pull_varint()
        length = buf.pull_varint()
        hi = lo - gap - 2
        if hi < 0 or length > hi:
            raise WireError("ACK range reaches below packet number 0")
        lo = hi - length
        ranges.append((lo, hi))
    return Ack(tuple(ranges), delay)


def push_stream_header(buf: Buffer, stream_id: int, offset: int, length: int, fin: bool) -> None:
    out = buf._out()
    out.append(FrameType.STREAM_FIN if fin else FrameType.STREAM)
    out += encode_varint(stream_id)
    out += encode_varint(offset)
    out += encode_varint(length)


def stream_header_size(stream_id: int, offset: int, length: int) -> int:
    return 1 + varint_size(stream_id) + varint_size(offset) + varint_size(length)


def push_frame(buf: Buffer, frame: Frame) -> None:
    """Append one frame; raises ValueError for values the wire cannot carry."""
    if isinstance(frame, Stream):
        push_stream_header(buf, frame.stream_id, frame.offset, len(frame.data), frame.fin)
        buf.push_bytes(frame.data)
    elif isinstance(frame, Ack):
        push_ack(buf, frame.ranges, frame.delay_us)
    elif isinstance(frame, Ping):
        buf.push_uint8(FrameType.PING)
    elif isinstance(frame, Padding):
        buf.push_bytes(bytes(frame.length))
    elif isinstance(frame, ResetStream):
        buf.push_uint8(FrameType.RESET_STREAM)
        buf.push_varint(frame.stream_id)
        buf.push_varint(frame.error_code)
        buf.push_varint(frame.final_size)
    elif isinstance(frame, StopSending):
        buf.push_uint8(FrameType.STOP_SENDING)
        buf.push_varint(frame.stream_id)
        buf.push_varint(frame.error_code)
    elif isinstance(frame, MaxData):
        buf.push_uint8(FrameType.MAX_DATA)
        buf.push_varint(frame.limit)
    elif isinstance(frame, MaxStreamData):
        buf.push_uint8(FrameType.MAX_STREAM_DATA)
        buf.push_varint(frame.stream_id)
        buf.push_varint(frame.limit)
    elif isinstance(frame, MaxStreams):
        buf.push_uint8(FrameType.MAX_STREAMS)
        buf.push_varint(frame.limit)
    elif isinstance(frame, Datagram):
        buf.push_uint8(FrameType.DATAGRAM)
        buf.push_varint(len(frame.data))
        buf.push_bytes(frame.data)
    elif isinstance(frame, PathChallenge | PathResponse):
        if len(frame.data) != 8:
            raise ValueError("path challenge data is 8 bytes")
        is_challenge = isinstance(frame, PathChallenge)
        buf.push_uint8(FrameType.PATH_CHALLENGE if is_challenge else FrameType.PATH_RESPONSE)
        buf.push_bytes(frame.data)
    elif isinstance(frame, Close):
        reason = frame.reason.encode()[:MAX_REASON_LEN]
        buf.push_uint8(FrameType.CLOSE)
        buf.push_varint(frame.error_code)
        buf.push_varint(len(reason))
        buf.push_bytes(reason)
    else:
        raise TypeError(f"not a frame: {frame!r}")


def _varint_at(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int]:
    if pos >= end:
        raise WireError(f"truncated: wanted a varint at offset {pos}")
    first = data[pos]
    if first < 0x40:
        return first, pos + 1
    n = 1 << (first >> 6)
    if pos + n > end:
        raise WireError(f"truncated: varint of {n} bytes at offset {pos}")
    return int.from_bytes(data[pos : pos + n], "big") & ((1 << (8 * n - 2)) - 1), pos + n


def pull_stream_body(buf: Buffer) -> tuple[int, int, bytes]:
    """(stream id, offset, data) of a STREAM frame whose type byte was read.

    The receive path's hottest parser, so it works on the buffer's bytes directly.
    """
    data, end = buf.data, buf.end
    sid, pos = _varint_at(data, buf.pos, end)
    offset, pos = _varint_at(data, pos, end)
    length, pos = _varint_at(data, pos, end)
    if length > MAX_DATAGRAM_SIZE:
        raise WireError(f"STREAM length {length} exceeds the limit {MAX_DATAGRAM_SIZE}")
    if offset + length > MAX_VARINT:
        raise WireError("STREAM frame ends beyond the largest offset")
    if pos + length > end:
        raise WireError(f"truncated: wanted {length} bytes at offset {pos}, have {end}")
    buf.pos = pos + length
    return sid, offset, bytes(data[pos : pos + length])


def pull_frame(buf: Buffer) -> Frame:
    """Read one frame at the cursor."""
    t = buf.pull_uint8()
    if t == FrameType.STREAM or t == FrameType.STREAM_FIN:
        sid, offset, chunk = pull_stream_body(buf)
        return Stream(sid, offset, chunk, t == FrameType.STREAM_FIN)
    if t == FrameType.ACK:
        return pull_ack_body(buf)
    if t == FrameType.PADDING:
        n = 1
        while buf.pos < buf.end and buf.data[buf.pos] == 0:
            buf.pos += 1
            n += 1
        return Padding(n)
    if t == FrameType.PING:
        return Ping()
    if t == FrameType.DATAGRAM:
        length = buf.pull_varint_max(MAX_DATAGRAM_SIZE, "DATAGRAM length")
        return Datagram(buf.pull_bytes(length))
    if t == FrameType.MAX_DATA:
        return MaxData(buf.pull_varint())
    if t == FrameType.MAX_STREAM_DATA:
        return MaxStreamData(buf.pull_varint(), buf.pull_varint())
    if t == FrameType.MAX_STREAMS:
        return MaxStreams(buf.pull_varint())
    if t == FrameType.RESET_STREAM:
        return ResetStream(buf.pull_varint(), buf.pull_varint(), buf.pull_varint())
    if t == FrameType.STOP_SENDING:
        return StopSending(buf.pull_varint(), buf.pull_varint())
    if t == FrameType.PATH_CHALLENGE:
        return PathChallenge(buf.pull_bytes(8))
    if t == FrameType.PATH_RESPONSE:
        return PathResponse(buf.pull_bytes(8))
    if t == FrameType.CLOSE:
        code = buf.pull_varint()
        n = buf.pull_varint_max(MAX_REASON_LEN, "CLOSE reason length")
        return Close(code, buf.pull_bytes(n).decode("utf-8", "replace"))
    raise WireError(f"unknown frame type 0x{t:02x}")


def parse_frames(payload: bytes | bytearray | memoryview) -> list[Frame]:
    """All frames of a decrypted payload; an empty payload is an error."""
    buf = Buffer(payload)
    if buf.eof():
        raise WireError("empty packet payload")
    frames: list[Frame] = []
    while not buf.eof():
        frames.append(pull_frame(buf))
    return frames


def encode_frames(frames: list[Frame]) -> bytes:
    buf = Buffer()
    for f in frames:
        push_frame(buf, f)
    return bytes(buf.data)
