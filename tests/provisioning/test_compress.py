from __future__ import annotations

import contextlib
import gzip
import lzma
import os
from pathlib import Path

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning import compress
from provisioning.errors import ImageError

PAYLOAD = os.urandom(300_000) + bytes(5 << 20) + b"tail"
COMPRESSORS = {
    "xz": lambda d: lzma.compress(d),
    "gz": lambda d: gzip.compress(d),
    "zst": lambda d: zstandard.ZstdCompressor().compress(d),
}


def _read_all(path: Path) -> bytes:
    with compress.open_image(path) as reader:
        return b"".join(compress.iter_chunks(reader))


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_round_trip(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"x.img.{kind}"
    path.write_bytes(COMPRESSORS[kind](PAYLOAD))
    assert compress.detect(path) == kind
    assert _read_all(path) == PAYLOAD


def test_multi_frame_zstd(tmp_path: Path) -> None:
    path = tmp_path / "x.img.zst"
    cctx = zstandard.ZstdCompressor()
    path.write_bytes(cctx.compress(b"a" * 1000) + cctx.compress(b"b" * 1000))
    assert _read_all(path) == b"a" * 1000 + b"b" * 1000


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_truncated(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"x.img.{kind}"
    data = COMPRESSORS[kind](PAYLOAD)
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"truncated|corrupt"):
        _read_all(path)


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_corrupt(tmp_path: Path, kind: str) -> None:
    path = tmp_path / f"x.img.{kind}"
    data = bytearray(COMPRESSORS[kind](PAYLOAD))
    for i in range(40, len(data) - 40, 97):
        data[i] ^= 0x55
    path.write_bytes(bytes(data))
    with pytest.raises(ImageError, match=r"corrupt|truncated"):
        _read_all(path)


def test_wrong_suffix(tmp_path: Path) -> None:
    path = tmp_path / "x.img.xz"
    path.write_bytes(gzip.compress(b"abc"))
    with pytest.raises(ImageError, match=r"named \.xz but holds gz data"):
        compress.detect(path)
    raw = tmp_path / "y.img.zst"
    raw.write_bytes(b"\0" * 600)
    with pytest.raises(ImageError, match="uncompressed data"):
        compress.detect(raw)


@settings(max_examples=40)
@given(st.sampled_from(sorted(COMPRESSORS)), st.binary(max_size=200), st.integers(0, 400))
def test_damaged_streams_raise_image_error(kind: str, noise: bytes, cut: int) -> None:
    data = COMPRESSORS[kind](b"hello world" * 50)
    damaged = data[: min(cut, len(data))] + noise
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"x.img.{kind}"
        path.write_bytes(damaged)
        with contextlib.suppress(ImageError):
            _read_all(path)
