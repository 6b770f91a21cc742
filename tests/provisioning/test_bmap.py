from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning import bmap
from provisioning.errors import BmapError


def _sparse(path: Path, size: int, extents: list[tuple[int, bytes]]) -> None:
    with path.open("wb") as fh:
        fh.truncate(size)
        for off, data in extents:
            fh.seek(off)
            fh.write(data)


def test_create_maps_only_data_and_round_trips(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    _sparse(img, 10 << 20, [(0, b"a" * 5000), (3 << 20, b"b" * 100), ((10 << 20) - 10, b"z" * 10)])
    made = bmap.create(img)
    assert made.image_size == 10 << 20
    assert [(r.first, r.last) for r in made.ranges] == [(0, 1), (768, 768), (2559, 2559)]
    text = bmap.render(made)
    assert bmap.parse(text.encode()) == made
    assert "<BmapFileChecksum>" in text
    assert bmap.create_with_digest(img)[1] == hashlib.sha256(img.read_bytes()).hexdigest()


def test_altered_file_is_caught(tmp_path: Path) -> None:
    img = tmp_path / "x.img"
    _sparse(img, 1 << 20, [(4096, b"q" * 10)])
    text = bmap.render(bmap.create(img))
    with pytest.raises(BmapError, match="altered"):
        bmap.parse(text.replace("> 1 </Range>", "> 2 </Range>").encode())


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda t: t.replace('version="2.0"', 'version="1.2"'), "version"),
        (lambda t: t.replace("<ImageSize> 1048576 </ImageSize>", ""), "ImageSize"),
        (lambda t: t.replace("<BlockSize> 4096", "<BlockSize> 4095"), "power of two"),
        (lambda t: t.replace("<BlocksCount> 256", "<BlocksCount> 9"), "BlocksCount"),
        (lambda t: "<!DOCTYPE x [<!ENTITY a 'b'>]>" + t, "DTD"),
        (lambda t: t[: len(t) // 2], "XML"),
    ],
)
def test_bad_documents(tmp_path: Path, mutate: object, message: str) -> None:
    img = tmp_path / "x.img"
    _sparse(img, 1 << 20, [(4096, b"q" * 10)])
    text = bmap.render(bmap.create(img))
    text = text.replace(text.split("<BmapFileChecksum>")[1].split("<")[0], " ")
    with pytest.raises(BmapError, match=message):
        bmap.parse(mutate(text).encode())  # type: ignore[operator]


ranges = st.lists(st.tuples(st.integers(0, 50), st.integers(0, 5)), max_size=20)


@given(st.integers(1, 1 << 22), st.sampled_from([512, 4096, 65536]), ranges)
def test_render_parse_round_trip(size: int, block: int, spans: list[tuple[int, int]]) -> None:
    count = (size + block - 1) // block
    out: list[bmap.Range] = []
    pos = 0
    for gap, length in spans:
        first = pos + gap
        last = first + length
        if last >= count:
            break
        out.append(bmap.Range(first, last, f"{first:064x}"))
        pos = last + 1
    made = bmap.BlockMap(size, block, tuple(out))
    assert bmap.parse(bmap.render(made).encode()) == made


@given(st.binary(max_size=2000))
def test_random_bytes_are_rejected_cleanly(data: bytes) -> None:
    with contextlib.suppress(BmapError):
        bmap.parse(data)


@given(st.integers(0, 2000), st.text(max_size=20))
def test_mutated_documents_never_crash(pos: int, insert: str) -> None:
    made = bmap.BlockMap(1 << 20, 4096, (bmap.Range(1, 3, "a" * 64), bmap.Range(9, 9, "b" * 64)))
    text = bmap.render(made)
    pos = min(pos, len(text))
    try:
        got = bmap.parse((text[:pos] + insert + text[pos:]).encode())
    except BmapError:
        return
    for r in got.ranges:
        assert 0 <= r.first <= r.last < got.blocks_count


def test_data_extents_of_a_hole_only_file(tmp_path: Path) -> None:
    img = tmp_path / "empty.img"
    _sparse(img, 1 << 20, [])
    fd = os.open(img, os.O_RDONLY)
    try:
        assert bmap.data_extents(fd, 1 << 20) == []
    finally:
        os.close(fd)
