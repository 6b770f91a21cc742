from __future__ import annotations

import contextlib
import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provisioning.errors import ImageError
from provisioning.mbr import SECTOR, build_mbr, parse_mbr, pi_layout

entries = st.lists(
    st.tuples(
        st.sampled_from([0x0C, 0x0B, 0x83, 0x07, 0x82]),
        st.integers(1, 1 << 20),
        st.integers(1, 1 << 20),
        st.booleans(),
    ),
    max_size=4,
)


@given(entries)
def test_round_trip_or_overlap_error(parts: list[tuple[int, int, int, bool]]) -> None:
    sector = build_mbr(parts)
    ordered = sorted(parts, key=lambda p: p[1])
    overlap = any(b[1] < a[1] + a[2] for a, b in itertools.pairwise(ordered))
    if overlap:
        with pytest.raises(ImageError, match="overlap"):
            parse_mbr(sector)
        return
    parsed = parse_mbr(sector)
    assert [(p.type, p.start_lba, p.sectors, p.bootable) for p in parsed] == parts
    assert [p.number for p in parsed] == list(range(1, len(parts) + 1))


@given(st.binary(min_size=0, max_size=600))
def test_random_bytes_give_partitions_or_image_error(data: bytes) -> None:
    try:
        parts = parse_mbr(data, image_size=len(data) * 1000)
    except ImageError as exc:
        assert str(exc)
        return
    for p in parts:
        assert 1 <= p.number <= 4 and p.start_lba > 0 and p.end <= len(data) * 1000


@given(st.binary(min_size=SECTOR, max_size=SECTOR), st.integers(0, 509), st.integers(0, 255))
def test_flipped_bytes_never_crash(base: bytes, pos: int, value: int) -> None:
    sector = bytearray(build_mbr([(0x0C, 8192, 1000, False), (0x83, 9192, 5000, False)]))
    sector[pos] = value
    with contextlib.suppress(ImageError):
        parse_mbr(bytes(sector), image_size=(9192 + 5000) * SECTOR)


def test_pi_layout_and_errors() -> None:
    good = build_mbr([(0x0C, 8192, 1000, False), (0x83, 9192, 5000, False)])
    boot, root = pi_layout(parse_mbr(good))
    assert (boot.offset, root.offset) == (8192 * SECTOR, 9192 * SECTOR)
    with pytest.raises(ImageError, match="truncated"):
        parse_mbr(good, image_size=9192 * SECTOR + 100)
    with pytest.raises(ImageError, match="55aa"):
        parse_mbr(bytes(SECTOR))
    with pytest.raises(ImageError, match="too short"):
        parse_mbr(good[:100])
    with pytest.raises(ImageError, match="GPT"):
        parse_mbr(build_mbr([(0xEE, 1, 100, False)]))
    with pytest.raises(ImageError, match="not a FAT boot"):
        pi_layout(parse_mbr(build_mbr([(0x83, 8192, 1000, False)])))
    with pytest.raises(ImageError, match="root partition"):
        pi_layout(parse_mbr(build_mbr([(0x0C, 8192, 1000, False), (0x07, 9192, 10, False)])))
