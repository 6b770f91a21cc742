"""Signed node records and DHT messages: round trips, forgeries, fuzzing."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.identity import Identity
from node.overlay import wire
from node.overlay.errors import WireError
from node.overlay.records import decode_record, sign_record
from node.overlay.wire import Message, MsgType

IDENT = Identity.from_seed(bytes(range(32)))
RECORD = sign_record(
    IDENT,
    addresses=("198.51.100.7:7700", "[2001:db8::1]:7700"),
    nat_class="full-cone",
    relays=("203.0.113.5:7700",),
    seq=3,
    expires=2_000_000_000,
)


def test_record_round_trip_and_signature() -> None:
    raw = RECORD.encode()
    back, used = decode_record(raw)
    assert used == len(raw)
    assert back == RECORD
    assert back.node_id == IDENT.node_id
    back.verify(now=1_000_000_000)


def test_tampered_record_rejected() -> None:
    moved = dataclasses.replace(RECORD, addresses=("6.6.6.6:7700",))
    with pytest.raises(WireError, match="bad signature"):
        moved.verify(now=0)
    other = Identity.from_seed(bytes(32))
    stolen = dataclasses.replace(RECORD, public_key=other.public_key)
    with pytest.raises(WireError, match="bad signature"):
        stolen.verify(now=0)


def test_expired_record_rejected() -> None:
    with pytest.raises(WireError, match="expired"):
        RECORD.verify(now=2_000_000_001)


@pytest.mark.parametrize(
    "msg",
    [
        Message(MsgType.PING, 1, sender=RECORD),
        Message(MsgType.PONG, 1, sender=RECORD),
        Message(MsgType.FIND_NODE, 2**64 - 1, key=bytes(32), sender=RECORD),
        Message(MsgType.NODES, 5, nodes=[RECORD] * 20),
        Message(MsgType.GET_PROVIDERS, 6, key=b"k" * 32, sender=RECORD),
        Message(MsgType.PROVIDERS, 6, nodes=[RECORD], providers=[RECORD, RECORD]),
        Message(MsgType.ADD_PROVIDER, 7, key=b"c" * 32, sender=RECORD),
        Message(MsgType.ACK, 7),
    ],
)
def test_message_round_trip(msg: Message) -> None:
    data = wire.encode(msg)
    assert len(data) <= wire.MAX_MESSAGE
    assert wire.decode(data) == msg


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"", "shorter"),
        (b"\x02\x01" + bytes(8), "version"),
        (b"\x01\x63" + bytes(8), "unknown"),
        (b"\x01\x03" + bytes(8) + bytes(5), "key"),
        (b"\x01\x04" + bytes(8) + b"\x15", "21 records"),
        (wire.encode(Message(MsgType.PONG, 1, sender=RECORD)) + b"x", "trailing"),
        (wire.encode(Message(MsgType.NODES, 1, nodes=[RECORD]))[:-3], "truncated|past"),
    ],
)
def test_malformed_messages(data: bytes, why: str) -> None:
    with pytest.raises(WireError, match=why):
        wire.decode(data)


@given(st.binary(max_size=600))
def test_fuzz_decode(data: bytes) -> None:
    try:
        msg = wire.decode(data)
    except WireError:
        return
    assert wire.encode(msg) == data


@settings(max_examples=300)
@given(st.integers(0, 2000), st.integers(0, 255))
def test_fuzz_mutated_message(index: int, byte: int) -> None:
    data = bytearray(wire.encode(Message(MsgType.PROVIDERS, 9, nodes=[RECORD], providers=[RECORD])))
    data[index % len(data)] = byte
    try:
        msg = wire.decode(bytes(data))
    except WireError:
        return
    for rec in msg.nodes + msg.providers:
        if rec != RECORD:
            with pytest.raises(WireError):
                rec.verify(now=0)
