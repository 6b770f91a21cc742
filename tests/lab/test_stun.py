"""The lab's STUN helper: wire format both ways, and bad datagrams rejected cleanly."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lab import stun

TXID = bytes(range(12))


def test_response_roundtrip() -> None:
    data = stun.binding_response(TXID, ("198.18.3.2", 40000))
    assert stun.parse_response(data, TXID) == ("198.18.3.2", 40000)


def test_request_roundtrip() -> None:
    request, txid = stun.binding_request(TXID)
    assert txid == TXID
    assert stun.parse_request(request) == TXID


def test_rfc5769_ipv4_response_vector() -> None:
    # RFC 5769 section 2.2: XOR-MAPPED-ADDRESS 192.0.2.1:32853 (with SOFTWARE,
    # MESSAGE-INTEGRITY and FINGERPRINT, which the lab helper ignores).
    vector = bytes.fromhex(
        "0101003c2112a442b7e7a701bc34d686fa87dfae"
        "8022000b7465737420766563746f7220"
        "002000080001a147e112a643"
        "000800142b91f599fd9e90c38c7489f92af9ba53f06be7d7"
        "80280004c07d4c96"
    )
    txid = bytes.fromhex("b7e7a701bc34d686fa87dfae")
    assert stun.parse_response(vector, txid) == ("192.0.2.1", 32853)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "shorter than"),
        (struct.pack("!HHI12s", 1, 0, 0x12345678, TXID), "magic cookie"),
        (struct.pack("!HHI12s", 1, 4, stun.MAGIC_COOKIE, TXID), "length field"),
        (struct.pack("!HHI12s", 0xC001, 0, stun.MAGIC_COOKIE, TXID), "top two bits"),
        (struct.pack("!HHI12s", 0x0111, 0, stun.MAGIC_COOKIE, TXID), "not a Binding request"),
        (struct.pack("!HHI12sHH", 1, 4, stun.MAGIC_COOKIE, TXID, 3, 8), "past the message"),
    ],
)
def test_bad_requests_are_rejected_with_a_reason(data: bytes, message: str) -> None:
    with pytest.raises(stun.StunError, match=message):
        stun.parse_request(data)


def test_response_of_another_transaction_is_rejected() -> None:
    data = stun.binding_response(TXID, ("198.18.3.2", 1))
    with pytest.raises(stun.StunError, match="another transaction"):
        stun.parse_response(data, bytes(12))


@given(st.binary(max_size=2000))
def test_parsers_reject_random_bytes_cleanly(data: bytes) -> None:
    for parse in (stun.parse_request, lambda d: stun.parse_response(d, TXID)):
        with contextlib.suppress(stun.StunError):
            parse(data)


@given(st.binary(min_size=1, max_size=64), st.integers(0, 200), st.integers(0, 255))
def test_parsers_survive_mutated_messages(tail: bytes, pos: int, byte: int) -> None:
    msg = bytearray(stun.binding_response(TXID, ("10.1.0.2", 5000)) + tail)
    msg[pos % len(msg)] = byte
    for parse in (stun.parse_request, lambda d: stun.parse_response(d, TXID)):
        with contextlib.suppress(stun.StunError):
            parse(bytes(msg))
