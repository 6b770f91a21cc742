"""storage/1 codec: every message round-trips; any bytes give a message or ProtocolError."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.identity import Identity
from node.storage_agent import audit, wire
from node.storage_agent.contracts import Contract
from node.storage_agent.errors import ProtocolError
from node.storage_agent.vouchers import Voucher

KEY = Identity.from_seed(b"k" * 32)
b32 = st.binary(min_size=32, max_size=32)

contracts = st.builds(
    Contract, b32, b32, st.integers(0, 4 << 20), st.integers(0, 2**63), st.integers(0, 2**40),
    st.integers(0, 2**40), b32, b32, st.binary(min_size=64, max_size=64),
    st.binary(min_size=64, max_size=64).filter(lambda s: s != bytes(64)),
)  # fmt: skip
vouchers = st.builds(
    Voucher, b32, b32, *[st.integers(0, 2**64 - 1)] * 5, st.binary(min_size=64, max_size=64)
)
challenges = st.builds(audit.Challenge, b32, b32, st.integers(1, audit.MAX_SAMPLES))


@st.composite
def responses(draw: st.DrawFn) -> audit.Response:
    n = draw(st.integers(0, 4))
    segs = tuple(draw(st.binary(max_size=64)) for _ in range(n))
    paths = tuple(tuple(draw(st.lists(b32, max_size=3))) for _ in range(n))
    return audit.Response(
        draw(b32), draw(b32), segs, paths, draw(st.binary(min_size=64, max_size=64))
    )


messages = st.one_of(
    st.builds(wire.Store, contracts, st.binary(max_size=256)),
    st.builds(wire.Stored, contracts),
    st.builds(wire.Fetch, b32),
    st.builds(wire.Chunk, st.binary(max_size=256)),
    st.builds(wire.ChallengeMsg, challenges),
    st.builds(wire.Proof, responses()),
    st.builds(wire.Verdict, b32, st.sampled_from(list(audit.Outcome))),
    st.builds(wire.VoucherMsg, vouchers),
    st.just(wire.Ok()),
    st.just(wire.Hello()),
    st.builds(wire.Release, b32, st.binary(min_size=64, max_size=64)),
    st.builds(wire.Info, b32, st.integers(0, 2**64 - 1), st.booleans()),
    st.builds(wire.Error, st.sampled_from(list(wire.ErrorCode)), st.text(max_size=50)),
)


@given(messages)
def test_round_trip(msg: wire.Message) -> None:
    assert wire.decode_frame(wire.encode(msg)) == msg


@given(st.integers(0, 255), st.binary(max_size=600))
def test_any_body_parses_or_is_a_protocol_error(kind: int, body: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        wire.decode(kind, body)


@given(messages, st.integers(0, 400), st.integers(0, 255))
def test_corrupted_frames_never_crash(msg: wire.Message, pos: int, xor: int) -> None:
    frame = bytearray(wire.encode(msg))
    frame[pos % len(frame)] ^= xor
    with contextlib.suppress(ProtocolError):
        wire.decode_frame(bytes(frame))


class _Bytes:
    """A stream that yields given bytes (what asyncio.StreamReader does with fed data)."""

    def __init__(self, data: bytes) -> None:
        self.reader = asyncio.StreamReader()
        self.reader.feed_data(data)
        self.reader.feed_eof()

    async def readexactly(self, n: int) -> bytes:
        return await self.reader.readexactly(n)

    def write(self, data: bytes) -> None:
        raise AssertionError("not written")

    async def drain(self) -> None:
        return None


async def test_stream_reader_bounds_and_eof() -> None:
    assert await wire.read_message(_Bytes(b"")) is None
    assert await wire.read_message(_Bytes(wire.encode(wire.Ok()))) == wire.Ok()
    with pytest.raises(ProtocolError, match="frame of"):
        await wire.read_message(_Bytes(struct.pack(">IB", wire.MAX_FRAME + 1, 1)))
    with pytest.raises(ProtocolError, match="ended inside a message"):
        await wire.read_message(_Bytes(wire.encode(wire.Chunk(b"x" * 100))[:50]))
    with pytest.raises(ProtocolError, match="header"):
        await wire.read_message(_Bytes(b"\x00\x00"))
