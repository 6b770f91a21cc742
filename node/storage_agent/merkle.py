"""Merkle tree over fixed-size segments of a chunk, and inclusion proofs.

Leaves are ``H(0x00 || segment)``, inner nodes ``H(0x01 || left || right)`` (the domain
separation of RFC 6962), H = BLAKE2b-256. A level with an odd count carries its last node up
unchanged, so a proof for leaf ``i`` of ``n`` is the list of siblings met on the way up; the
verifier recomputes the same shape from ``i`` and ``n`` alone.
"""

from __future__ import annotations

import hashlib

from node.storage_agent import _blake2b

SEGMENT_SIZE = 4096
"""Bytes per segment; the last segment of a chunk may be shorter."""
HASH_LEN = 32


def _h(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=HASH_LEN).digest()


def leaf_hash(segment: bytes) -> bytes:
    return _h(b"\x00" + segment)


def node_hash(left: bytes, right: bytes) -> bytes:
    return _h(b"\x01" + left + right)


def segment_count(size: int, segment_size: int = SEGMENT_SIZE) -> int:
    """Number of segments of a chunk of ``size`` bytes (an empty chunk has one empty segment)."""
    return max(1, -(-size // segment_size))


def segment(data: bytes | memoryview, index: int, segment_size: int = SEGMENT_SIZE) -> bytes:
    return bytes(data[index * segment_size : (index + 1) * segment_size])


def leaves(data: bytes | bytearray | memoryview, segment_size: int = SEGMENT_SIZE) -> list[bytes]:
    """The leaf hashes of every segment (hashed in place by libsodium, without the GIL)."""
    return _blake2b.digests_of_pieces(data, segment_size, prefix=b"\x00")


def levels_from_leaves(leaf_hashes: list[bytes]) -> list[list[bytes]]:
    """Every level of the tree above ``leaf_hashes``, leaves first, root last."""
    if not leaf_hashes:
        raise ValueError("a Merkle tree has at least one leaf")
    level = leaf_hashes
    out = [level]
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        out.append(nxt)
        level = nxt
    return out


def levels(
    data: bytes | bytearray | memoryview, segment_size: int = SEGMENT_SIZE
) -> list[list[bytes]]:
    """Every level of the tree, leaves first, root last."""
    return levels_from_leaves(leaves(data, segment_size))


def root(data: bytes | bytearray | memoryview, segment_size: int = SEGMENT_SIZE) -> bytes:
    return levels(data, segment_size)[-1][0]


def proof(tree: list[list[bytes]], index: int) -> list[bytes]:
    """Siblings of leaf ``index`` from the bottom up (levels where it has none are skipped)."""
    path = []
    for level in tree[:-1]:
        sibling = index ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        index //= 2
    return path


def proof_length(index: int, count: int) -> int:
    """How many siblings a proof for leaf ``index`` of ``count`` has."""
    length = 0
    while count > 1:
        if (index ^ 1) < count:
            length += 1
        index //= 2
        count = (count + 1) // 2
    return length


def verify(
    root_hash: bytes, index: int, count: int, segment_data: bytes, path: list[bytes]
) -> bool:
    """True when ``segment_data`` is leaf ``index`` of ``count`` under ``root_hash``."""
    if not 0 <= index < count or len(path) != proof_length(index, count):
        return False
    node = leaf_hash(segment_data)
    siblings = iter(path)
    while count > 1:
        if (index ^ 1) < count:
            sib = next(siblings)
            node = node_hash(node, sib) if index % 2 == 0 else node_hash(sib, node)
        index //= 2
        count = (count + 1) // 2
    return node == root_hash
