from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.storage_agent import merkle


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
