"""Wire codec: round trips, exact encodings and hostile input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.transport import _wire as wire
from node.transport.errors import WireError

varints = st.integers(min_value=0, max_value=wire.MAX_VARINT)
small = st.integers(min_value=0, max_value=1 << 30)


@st.composite
def acks(draw: st.DrawFn) -> wire.Ack:
    n = draw(st.integers(min_value=1, max_value=wire.MAX_ACK_RANGES))
    hi = draw(st.integers(min_value=0, max_value=1 << 40))
    ranges = []
    for _ in range(n):
        length = draw(st.integers(min_value=0, max_value=min(hi, 1000)))
        lo = hi - length
        ranges.append((lo, hi))
        gap = draw(st.integers(min_value=0, max_value=1000))
        hi = lo - gap - 2
        if hi < 0:
            break
    return wire.Ack(tuple(ranges), draw(small))


frames = st.one_of(
    st.builds(wire.Ping),
    acks(),
    st.builds(wire.ResetStream, small, small, small),
    st.builds(wire.StopSending, small, small),
    st.builds(wire.MaxData, varints),
    st.builds(wire.MaxStreamData, small, varints),
    st.builds(wire.MaxStreams, varints),
    st.builds(wire.Stream, small, small, st.binary(max_size=1200), st.booleans()),
    st.builds(wire.Datagram, st.binary(max_size=1200)),
    st.builds(wire.PathChallenge, st.binary(min_size=8, max_size=8)),
    st.builds(wire.PathResponse, st.binary(min_size=8, max_size=8)),
    st.builds(wire.Close, small, st.text(max_size=80)),
)


@given(st.lists(frames, min_size=1, max_size=8))
def test_frames_round_trip(fs: list[wire.Frame]) -> None:
    assert wire.parse_frames(wire.encode_frames(fs)) == fs


@given(varints)
def test_varint_round_trip(v: int) -> None:
    buf = wire.Buffer()
    buf.push_varint(v)
    assert len(buf.data) == wire.varint_size(v)
    assert wire.Buffer(bytes(buf.data)).pull_varint() == v


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        # RFC 9000 appendix A.1 sample encodings
        (151288809941952652, "c2197c5eff14e88c"),
        (494878333, "9d7f3e7d"),
        (15293, "7bbd"),
        (37, "25"),
    ],
)
def test_varint_vectors(value: int, encoded: str) -> None:
    assert wire.encode_varint(value).hex() == encoded
    assert wire.Buffer(bytes.fromhex(encoded)).pull_varint() == value


def test_ack_encoding_is_compact() -> None:
    # base 1000 with ranges 990-1000, 900-980, 10-20: 1 type + 2+1+1+1 + (1+2) + (2+1) bytes
    ack = wire.Ack(((990, 1000), (900, 980), (10, 20)), 0)
    data = wire.encode_frames([ack])
    assert data.hex() == "02" + "43e8" + "00" + "02" + "0a" + "08" + "40" + "50" + "436e" + "0a"
    assert wire.parse_frames(data) == [ack]


def test_ack_below_zero_is_rejected() -> None:
    data = bytes([wire.FrameType.ACK, 5, 0, 0, 6])
    with pytest.raises(WireError, match="below packet number 0"):
        wire.parse_frames(data)


def test_ack_range_count_is_bounded() -> None:
    data = bytes([wire.FrameType.ACK, 0x3F, 0]) + wire.encode_varint(wire.MAX_ACK_RANGES)
    with pytest.raises(WireError, match="range count"):
        wire.parse_frames(data + bytes(10))


def test_stream_length_is_bounded() -> None:
    data = bytes([wire.FrameType.STREAM, 0, 0]) + wire.encode_varint(70000) + bytes(70000)
    with pytest.raises(WireError, match="STREAM length"):
        wire.parse_frames(data)


def test_truncated_stream_frame() -> None:
    with pytest.raises(WireError, match="truncated"):
        wire.parse_frames(bytes([wire.FrameType.STREAM, 0, 0, 10]) + b"abc")


def test_unknown_frame_type() -> None:
    with pytest.raises(WireError, match="unknown frame type 0x7e"):
        wire.parse_frames(b"\x7e")


def test_initial_layout_and_padding() -> None:
    h = wire.LongHeader(
        wire.PacketType.INITIAL,
        wire.VERSION,
        bytes(8),
        b"\x01" * 8,
        b"tok",
        wire.HandshakePattern.IK,
        b"m" * 5,
    )
    data = wire.encode_long(h, pad_to=wire.MIN_INITIAL_SIZE)
    assert len(data) == 1200
    assert data[:2] == b"\x81\x01"
    assert data[18:22] == b"\x03tok"
    assert data[22] == 1
    assert data[23:30] == b"\x00\x05mmmmm"
    assert wire.decode_long(data) == h


def test_short_header_layout() -> None:
    header = wire.short_header(b"\xaa" * 8, 258, 1)
    assert header.hex() == "95" + "aa" * 8 + "0000000000000102"
    assert wire.pull_short_header(header + bytes(16)) == (b"\xaa" * 8, 258, 1)


def test_data_packets_never_look_like_stun() -> None:
    for ptype in wire.PacketType:
        assert (0x80 | ptype) & 0xC0 != 0


@given(st.binary(max_size=300))
@settings(max_examples=400)
def test_random_frames_only_raise_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        wire.parse_frames(data)


@given(st.binary(max_size=1300))
@settings(max_examples=400)
def test_random_long_headers_only_raise_wire_error(data: bytes) -> None:
    with contextlib.suppress(WireError):
        wire.decode_long(bytes([0x80 | (data[0] % 5 + 1 if data else 1)]) + data)


@given(st.lists(frames, min_size=1, max_size=4), st.data())
def test_mutated_frames_only_raise_wire_error(fs: list[wire.Frame], data: st.DataObject) -> None:
    encoded = bytearray(wire.encode_frames(fs))
    i = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1))
    encoded[i] = data.draw(st.integers(min_value=0, max_value=255))
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded)))
    with contextlib.suppress(WireError):
        wire.parse_frames(bytes(encoded[:cut]))
