"""The chunk store on real files: layout, idempotence, verification file, index rebuild."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node import state
from node.identity import Identity
from node.storage_agent import index, merkle
from node.storage_agent.errors import ChunkCorrupt, ChunkMissing, ProofError
from node.storage_agent.store import (
    READ_PIECE,
    ChunkHasher,
    ChunkStore,
    DiskProblem,
    chunk_id,
    decode_tree,
    encode_tree,
)

NODE = Identity.from_seed(b"s" * 32)


def make(root: Path) -> ChunkStore:
    store = ChunkStore(root, NODE.node_id_text)
    store.initialise(expect_existing=False)
    return store


@given(st.binary(max_size=20_000), st.lists(st.integers(0, 20_000), max_size=6))
def test_chunk_id_is_blake2b_256_however_the_bytes_arrive(data: bytes, cuts: list[int]) -> None:
    want = hashlib.blake2b(data, digest_size=32).digest()
    assert chunk_id(data) == chunk_id(bytearray(data)) == chunk_id(memoryview(data)) == want
    h = ChunkHasher()
    edges = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    for a, b in itertools.pairwise(edges):
        h.update(memoryview(data)[a:b])
    assert h.digest() == want


def test_put_read_layout(tmp_path: Path) -> None:
    store = make(tmp_path)
    data = os.urandom(10_000)
    cid = store.put(data)
    h = cid.hex()
    assert (tmp_path / "chunks" / h[:2] / h[2:4] / h).read_bytes() == data
    assert store.put(data) == cid
    assert store.read_verified(cid) == data
    assert list(store.scan()) == [(cid, len(data))]
    assert list((tmp_path / "chunks" / ".tmp").iterdir()) == []
    with pytest.raises(ChunkCorrupt):
        store.put(data, expected=chunk_id(b"other"))
    with pytest.raises(ChunkMissing):
        store.read(chunk_id(b"absent"))


@pytest.mark.parametrize("size", [0, 1, READ_PIECE - 1, READ_PIECE, 3 * READ_PIECE + 5])
def test_served_read_checks_every_byte(tmp_path: Path, size: int) -> None:
    store = make(tmp_path)
    data = os.urandom(size)
    cid = store.put(data)
    assert store.read_verified(cid) == data
    path = store.path_of(cid)
    if size:
        raw = bytearray(data)
        raw[size - 1] ^= 1
        path.write_bytes(bytes(raw))
        with pytest.raises(ChunkCorrupt):
            store.read_verified(cid)
        path.write_bytes(data[: size - 1])
        with pytest.raises(ChunkCorrupt):
            store.read_verified(cid)
    path.unlink()
    with pytest.raises(ChunkMissing):
        store.read_verified(cid)


def test_leftover_temp_files_are_removed_and_never_listed(tmp_path: Path) -> None:
    store = make(tmp_path)
    (store.tmp / "half-written").write_bytes(b"x" * 100)
    assert list(store.scan()) == []
    store.initialise(expect_existing=True)
    assert list(store.tmp.iterdir()) == []


def test_verification_file_catches_missing_and_swapped_disks(tmp_path: Path) -> None:
    store = make(tmp_path / "disk")
    assert store.disk_problem() is None
    other = ChunkStore(tmp_path / "disk", Identity.from_seed(b"z" * 32).node_id_text)
    assert "another node" in (other.disk_problem() or "")
    with pytest.raises(DiskProblem, match="another node"):
        other.initialise(expect_existing=False)
    empty = ChunkStore(tmp_path / "mountpoint", NODE.node_id_text)
    (tmp_path / "mountpoint").mkdir()
    with pytest.raises(DiskProblem, match="missing"):
        empty.initialise(expect_existing=True)
    assert not (tmp_path / "mountpoint" / "storage-id").exists()


def test_chunks_without_verification_file_are_not_taken_over(tmp_path: Path) -> None:
    store = make(tmp_path)
    store.put(b"data")
    (tmp_path / "storage-id").unlink()
    with pytest.raises(DiskProblem, match="holds chunks"):
        ChunkStore(tmp_path, NODE.node_id_text).initialise(expect_existing=False)


def test_index_rebuild_from_files_marks_damage(tmp_path: Path) -> None:
    store = make(tmp_path / "disk")
    ids = [store.put(os.urandom(5000)) for _ in range(20)]
    bad = store.path_of(ids[3])
    raw = bytearray(bad.read_bytes())
    raw[100] ^= 1
    bad.write_bytes(bytes(raw))
    db = state.open_state(tmp_path / "state.db")
    index.setup(db)
    counts = index.rebuild(db, store)
    assert counts["chunks"] == 20 and counts["damaged"] == 1
    assert index.totals(db) == (20, 20 * 5000)
    assert index.get_meta(db, index.INDEX_COMPLETE) is not None


def test_index_rebuild_skips_tree_caches_and_removes_stray_ones(tmp_path: Path) -> None:
    store = make(tmp_path / "disk")
    ids = [store.put(os.urandom(9000)) for _ in range(5)]
    assert all(store.tree_path(c).is_file() for c in ids)
    store.path_of(ids[0]).unlink()  # lost from outside the agent: its cache is a stray
    (store.tree_path(ids[0]).parent / "not-a-chunk").write_bytes(b"x")
    db = state.open_state(tmp_path / "state.db")
    index.setup(db)
    counts = index.rebuild(db, store)
    assert counts["chunks"] == 4 and counts["damaged"] == 0 and counts["stray_trees"] == 1
    assert not store.tree_path(ids[0]).exists()
    assert all(store.tree_path(c).is_file() for c in ids[1:])


def test_put_restores_a_missing_tree_cache(tmp_path: Path) -> None:
    store = make(tmp_path)
    data = os.urandom(20_000)
    cid = store.put(data)
    store.tree_path(cid).unlink()
    assert store.put(data) == cid
    assert store.load_tree(cid, len(data)) == merkle.leaves(data)


@pytest.mark.parametrize(
    "size", [0, 1, 4095, 4096, 4097, READ_PIECE - 1, READ_PIECE, READ_PIECE + 5, 4 << 20]
)
def test_streamed_verify_matches_whole_chunk_hashing(tmp_path: Path, size: int) -> None:
    store = make(tmp_path)
    data = os.urandom(size)
    cid = store.put(data)
    assert b"".join(bytes(p) for p in store.stream(cid)) == data
    assert store.verify(cid, leaves=True) == (True, size, merkle.leaves(data))
    assert store.verify(cid) == (True, size, None)
    if size:
        bad = bytearray(data)
        bad[size // 2] ^= 1
        store.path_of(cid).write_bytes(bytes(bad))
        assert store.verify(cid)[0] is False
    with pytest.raises(ChunkMissing):
        store.verify(chunk_id(b"absent"))


@given(st.binary(max_size=300), st.integers(0, 1 << 23))
def test_tree_cache_parser_never_crashes(raw: bytes, size: int) -> None:
    cid = chunk_id(raw)
    with contextlib.suppress(ValueError):
        decode_tree(cid, size, raw)


@given(st.binary(min_size=1, max_size=20_000), st.integers(0, 400))
def test_tree_cache_round_trips_and_any_flip_is_caught(data: bytes, where: int) -> None:
    cid = chunk_id(data)
    raw = encode_tree(cid, len(data), merkle.leaves(data))
    assert decode_tree(cid, len(data), raw) == merkle.leaves(data)
    bad = bytearray(raw)
    bad[where % len(raw)] ^= 0x80
    with pytest.raises(ValueError):
        decode_tree(cid, len(data), bytes(bad))
    with pytest.raises(ValueError):
        decode_tree(chunk_id(b"another chunk"), len(data), raw)


def test_rejected_chunk_leaves_no_temp_file(tmp_path: Path) -> None:
    store = make(tmp_path)

    def refuse(leaves: list[bytes]) -> None:
        raise ProofError(f"refused {len(leaves)} leaves")

    with pytest.raises(ChunkCorrupt):
        store.put(os.urandom(50_000), expected=chunk_id(b"other"))
    with pytest.raises(ProofError, match="refused 13 leaves"):
        store.put(os.urandom(50_000), check=refuse)
    assert list(store.tmp.iterdir()) == [] and list(store.scan()) == []


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Every fsync and rename the store makes, in order, as (kind, file name); the calls
    still go to the real functions."""
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{fd}")).name))
        real_fsync(fd)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_chunk_is_durable_before_put_returns_and_the_cache_costs_no_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make(tmp_path)
    data = os.urandom(3 * merkle.SEGMENT_SIZE + 7)
    cid = chunk_id(data)
    store.path_of(cid).parent.mkdir(parents=True)  # only the chunk's own directory to sync
    events = _record_syncs(monkeypatch)
    assert store.put(data) == cid
    h = cid.hex()
    chunk_sync = [i for i, (kind, name) in enumerate(events) if kind == "fsync" and name != h[2:4]]
    assert len(chunk_sync) == 1 and events[chunk_sync[0]][1].endswith(".tmp")
    assert events[chunk_sync[0] + 1 :] == [
        ("rename", h),
        ("rename", h + ".tree"),
        ("fsync", h[2:4]),
    ]
    assert store.load_tree(cid, len(data)) == merkle.leaves(data)
    events.clear()
    store.save_tree(cid, len(data), merkle.leaves(data))
    assert events == [("rename", h + ".tree")]


@pytest.mark.parametrize("left", ["missing", "empty", "zeros", "half"])
def test_cache_not_synced_before_a_power_cut_is_rebuilt(tmp_path: Path, left: str) -> None:
    # What an unsynced cache may look like after a power cut: each is refused and rebuilt.
    store = make(tmp_path)
    data = os.urandom(5 * merkle.SEGMENT_SIZE)
    cid = store.put(data)
    tree = store.tree_path(cid)
    raw = tree.read_bytes()
    if left == "missing":
        tree.unlink()
    else:
        tree.write_bytes(
            {"empty": b"", "zeros": bytes(len(raw)), "half": raw[: len(raw) // 2]}[left]
        )
    assert store.load_tree(cid, len(data)) is None
    assert store.put(data) == cid
    assert store.load_tree(cid, len(data)) == merkle.leaves(data)
