"""MicroPython relays in signed node records: their own kind, wire-compatible with older nodes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.config import parse_hostport
from node.identity import Identity
from node.overlay.records import (
    RELAY_MICROPYTHON,
    RELAY_NODE,
    decode_record,
    relay_entry,
    relay_kind,
    sign_record,
)

IDENT = Identity.from_seed(bytes(range(32)))


def test_a_record_lists_both_kinds_and_verifies() -> None:
    board = relay_entry(RELAY_MICROPYTHON, "198.18.0.9:7710")
    rec = sign_record(IDENT, addresses=("198.51.100.7:7700",), nat_class="symmetric",
                      relays=("203.0.113.5:7700", board), seq=1, expires=2_000_000_000)  # fmt: skip
    back, used = decode_record(rec.encode())
    assert used == len(rec.encode()) and back == rec
    back.verify(now=0)
    assert [relay_kind(r) for r in back.relays] == [
        (RELAY_NODE, "203.0.113.5:7700"),
        (RELAY_MICROPYTHON, "198.18.0.9:7710"),
    ]


def test_older_nodes_skip_a_board_entry() -> None:
    # Before relay kinds, a node parsed every entry as HOST:PORT and skipped what failed.
    with pytest.raises(ValueError, match="bad host"):
        parse_hostport(relay_entry(RELAY_MICROPYTHON, "198.18.0.9:7710"))
    with pytest.raises(ValueError, match="unknown relay kind"):
        relay_entry("turn", "198.18.0.9:7710")


@given(st.sampled_from([RELAY_NODE, RELAY_MICROPYTHON]), st.text(max_size=40))
def test_kind_round_trip(kind: str, address: str) -> None:
    if kind == RELAY_NODE and address.startswith("mp:"):
        return  # not an address a node relay can have
    assert relay_kind(relay_entry(kind, address)) == (kind, address)
