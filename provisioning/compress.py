"""Reading images that may be compressed (xz, gzip, zstd), recognised by their magic bytes.

The file name's suffix must agree with the content, so a mislabelled download is caught before
anything is written. Decompression errors and truncated streams become one-line ImageErrors.
"""

from __future__ import annotations

import gzip
import lzma
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Protocol

import zstandard

from provisioning.errors import ImageError

CHUNK = 4 << 20
_MAGIC = {
    "xz": b"\xfd7zXZ\x00",
    "gz": b"\x1f\x8b",
    "zst": b"\x28\xb5\x2f\xfd",
}
_SUFFIX = {".xz": "xz", ".gz": "gz", ".zst": "zst", ".zstd": "zst"}


class Reader(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def detect(path: Path) -> str:
    """``xz``, ``gz``, ``zst`` or ``raw`` for the file's content; checks the suffix agrees."""
    try:
        with path.open("rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror}") from exc
    kind = next((k for k, magic in _MAGIC.items() if head.startswith(magic)), "raw")
    claimed = _SUFFIX.get(path.suffix.lower())
    if claimed is not None and claimed != kind:
        what = "uncompressed data" if kind == "raw" else f"{kind} data"
        raise ImageError(
            f"{path} is named .{claimed} but holds {what}: rename it or fetch it again"
        )
    return kind


def stripped_name(path: Path) -> str:
    """The image's name without its compression suffix."""
    return path.stem if path.suffix.lower() in _SUFFIX else path.name


class _Checked:
    """Wraps a decompressing reader: decoder errors and early EOF become ImageError."""

    def __init__(self, inner: Reader, path: Path, kind: str) -> None:
        self._inner = inner
        self._path = path
        self._kind = kind

    def read(self, size: int = CHUNK, /) -> bytes:
        try:
            return self._inner.read(size)
        except EOFError as exc:
            raise ImageError(
                f"{self._path}: {self._kind} stream ends early: the file is truncated, "
                "download it again"
            ) from exc
        except (lzma.LZMAError, zlib.error, gzip.BadGzipFile, zstandard.ZstdError) as exc:
            raise ImageError(
                f"{self._path}: corrupt {self._kind} data ({exc}): download it again"
            ) from exc
        except OSError as exc:
            raise ImageError(f"cannot read image {self._path}: {exc}") from exc


class _ZstdReader:
    """zstd frames one after another; a frame cut short is reported as truncation."""

    def __init__(self, fh: BinaryIO) -> None:
        self._fh = fh
        self._obj = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False
        self._done = False

    def read(self, size: int = CHUNK, /) -> bytes:
        out = bytearray()
        while len(out) < size and not self._done:
            data = self._fh.read(1 << 20)
            if not data:
                if self._in_frame:
                    raise EOFError("zstd frame incomplete")
                self._done = True
                break
            while data:
                if not self._in_frame and not data.startswith(_MAGIC["zst"]):
                    raise zstandard.ZstdError("data after the last frame is not zstd")
                self._in_frame = True
                out += self._obj.decompress(data)
                data = b""
                if self._obj.eof:
                    data = self._obj.unused_data
                    self._obj = zstandard.ZstdDecompressor().decompressobj()
                    self._in_frame = False
        return bytes(out)


@contextmanager
def open_image(path: Path) -> Iterator[Reader]:
    """A reader of the image's uncompressed bytes."""
    kind = detect(path)
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc.strerror}") from exc
    with fh:
        inner: Reader
        if kind == "xz":
            inner = lzma.LZMAFile(fh)  # noqa: SIM115 (closed with fh)
        elif kind == "gz":
            inner = gzip.GzipFile(fileobj=fh)
        elif kind == "zst":
            inner = _ZstdReader(fh)
        else:
            inner = fh
        yield _Checked(inner, path, kind)


def iter_chunks(reader: Reader, size: int = CHUNK) -> Iterator[bytes]:
    """The reader's content in chunks of ``size`` bytes (the last may be shorter)."""
    while True:
        data = reader.read(size)
        if not data:
            return
        # Decompressors may return short reads; refill so chunks stay block-aligned.
        while len(data) < size:
            more = reader.read(size - len(data))
            if not more:
                break
            data += more
        yield data
