from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.storage_agent import _blake2b, merkle


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 5 * 4096 + 7, 1 << 20])
def test_every_segment_proves(size: int) -> None:
    data = os.urandom(size)
    tree = merkle.levels(data)
    count = merkle.segment_count(size)
    assert len(tree[0]) == count
    root = tree[-1][0]
    for i in range(count):
        path = merkle.proof(tree, i)
        assert len(path) == merkle.proof_length(i, count)
        assert merkle.verify(root, i, count, merkle.segment(data, i), path)


def test_wrong_segment_index_or_path_fails() -> None:
    data = os.urandom(5 * 4096)
    tree = merkle.levels(data)
    root = tree[-1][0]
    path = merkle.proof(tree, 2)
    assert not merkle.verify(root, 3, 5, merkle.segment(data, 2), path)
    assert not merkle.verify(root, 2, 5, merkle.segment(data, 2) + b"x", path)
    assert not merkle.verify(root, 2, 5, merkle.segment(data, 2), path[:-1])
    assert not merkle.verify(root, 7, 5, merkle.segment(data, 2), path)


def test_leaf_and_node_hashes_are_domain_separated() -> None:
    # A leaf whose bytes equal an inner node's input must not hash the same (RFC 6962 2.1).
    a, b = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.leaf_hash(a + b) != merkle.node_hash(a, b)


@given(st.binary(max_size=3 * 4096 + 100), st.integers(0, 10), st.binary(max_size=64))
def test_verify_never_crashes(data: bytes, index: int, junk: bytes) -> None:
    count = merkle.segment_count(len(data))
    root = merkle.root(data)
    merkle.verify(root, index, count, junk, [junk[:32]] * (index % 4))


@given(st.binary(max_size=20_000), st.integers(1, 5000), st.sampled_from([b"", b"\x00", b"ab"]))
def test_leaves_hashed_in_place_match_the_definition(
    data: bytes, segment_size: int, prefix: bytes
) -> None:
    # leaves are hashed by libsodium from a copied prefix state; each must equal
    # BLAKE2b-256(prefix || segment) as any other implementation computes it
    count = merkle.segment_count(len(data), segment_size)
    pieces = [data[i * segment_size : (i + 1) * segment_size] for i in range(count)]
    want = [hashlib.blake2b(prefix + p, digest_size=32).digest() for p in pieces]
    assert _blake2b.digests_of_pieces(data, segment_size, prefix) == want
    assert merkle.leaves(data, segment_size) == [merkle.leaf_hash(p) for p in pieces]
    assert merkle.leaves(memoryview(data), segment_size) == merkle.leaves(data, segment_size)
