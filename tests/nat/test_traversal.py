"""Hole-punch offers: round trip, bounds and fuzzing (they come from the peer)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.transport.nat.errors import NatError
from node.transport.nat.traversal import MAX_CANDIDATES, decode_offer, encode_offer, predicted


def test_offer_round_trip() -> None:
    cands = [("198.51.100.7", 4000), ("10.0.0.2", 7700)]
    assert decode_offer(encode_offer("abcd", "p" * 32, cands)) == ("abcd", "p" * 32, cands)


@pytest.mark.parametrize(
    "doc",
    [
        {"ufrag": "", "pwd": "p" * 32, "candidates": []},
        {"ufrag": "a", "pwd": "short", "candidates": []},
        {"ufrag": "a", "pwd": "p" * 32, "candidates": ["nohost"]},
        {"ufrag": "a", "pwd": "p" * 32, "candidates": ["1.2.3.4:0"]},
        {"ufrag": "a", "pwd": "p" * 32, "candidates": ["1.2.3.4:70000"]},
        {"ufrag": 5, "pwd": "p" * 32, "candidates": []},
        {"pwd": "p" * 32, "candidates": []},
    ],
)
def test_bad_offers_rejected(doc: object) -> None:
    with pytest.raises(NatError, match="malformed punch offer"):
        decode_offer(json.dumps(doc).encode())


def test_candidates_are_capped_and_size_bounded() -> None:
    many = [f"10.0.0.1:{1000 + i}" for i in range(100)]
    _, _, cands = decode_offer(
        json.dumps({"ufrag": "a", "pwd": "p" * 32, "candidates": many}).encode()
    )
    assert len(cands) == MAX_CANDIDATES
    with pytest.raises(NatError, match="exceeds"):
        decode_offer(b" " * 5000)
    with pytest.raises(NatError, match="malformed"):
        decode_offer(b"[" * 2000 + b"]" * 2000)


def test_port_prediction() -> None:
    assert predicted(("203.0.113.9", 65534)) == [("203.0.113.9", 65535)]
    assert predicted(("203.0.113.9", 4000), 2) == [("203.0.113.9", 4001), ("203.0.113.9", 4002)]


@given(st.binary(max_size=300))
def test_fuzz_offer_bytes(data: bytes) -> None:
    try:
        ufrag, pwd, cands = decode_offer(data)
    except NatError:
        return
    assert ufrag and pwd and len(cands) <= MAX_CANDIDATES


@given(
    st.dictionaries(
        st.sampled_from(["ufrag", "pwd", "candidates", "x"]),
        st.one_of(st.text(max_size=70), st.lists(st.text(max_size=30), max_size=20), st.none()),
    )
)
def test_fuzz_offer_documents(doc: dict[str, object]) -> None:
    try:
        _, _, cands = decode_offer(json.dumps(doc).encode())
    except NatError:
        return
    assert all(0 < port < 65536 for _, port in cands)
