"""Block maps in bmaptool's XML format (version 2.0): which blocks of an image hold data.

``create`` maps the data extents of a sparse image file (SEEK_DATA/SEEK_HOLE) and records a
SHA-256 per range; ``parse`` reads a .bmap back with strict bounds so a hostile file cannot
make the flasher write outside the image or use unbounded memory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from provisioning.errors import BmapError

BLOCK_SIZE = 4096
MAX_BMAP_BYTES = 64 << 20
_ZERO_SUM = "0" * 64
_RANGE = re.compile(r"^\s*(\d{1,19})\s*(?:-\s*(\d{1,19})\s*)?$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class Range:
    """Blocks ``first``..``last`` inclusive, and the SHA-256 of their bytes in the image."""

    first: int
    last: int
    sha256: str


@dataclass(frozen=True, slots=True)
class BlockMap:
    image_size: int
    block_size: int
    ranges: tuple[Range, ...]

    @property
    def blocks_count(self) -> int:
        return (self.image_size + self.block_size - 1) // self.block_size

    @property
    def mapped_blocks(self) -> int:
        return sum(r.last - r.first + 1 for r in self.ranges)

    def byte_span(self, r: Range) -> tuple[int, int]:
        """(offset, length) in bytes of a range; the last block may be short."""
        start = r.first * self.block_size
        end = min((r.last + 1) * self.block_size, self.image_size)
        return start, end - start


def data_extents(fd: int, size: int) -> list[tuple[int, int]]:
    """(start, end) byte extents holding data in an open file, from SEEK_DATA/SEEK_HOLE."""
    out: list[tuple[int, int]] = []
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        out.append((start, end))
        pos = end
    return out


def create(image: Path, block_size: int = BLOCK_SIZE) -> BlockMap:
    """Map the blocks of ``image`` that hold data, with a checksum per range."""
    return create_with_digest(image, block_size)[0]


def create_with_digest(image: Path, block_size: int = BLOCK_SIZE) -> tuple[BlockMap, str]:
    """The block map and the SHA-256 of the whole image, in one read of its data."""
    whole = hashlib.sha256()
    zeros = bytes(4 << 20)
    with image.open("rb") as fh:
        fd = fh.fileno()
        size = os.fstat(fd).st_size
        blocks: list[tuple[int, int]] = []
        for start, end in data_extents(fd, size):
            first, last = start // block_size, (end - 1) // block_size
            if blocks and first <= blocks[-1][1] + 1:
                blocks[-1] = (blocks[-1][0], max(last, blocks[-1][1]))
            else:
                blocks.append((first, last))
        ranges = []
        pos = 0
        for first, last in blocks:
            gap = first * block_size - pos
            while gap:  # holes read as zeros
                n = min(gap, len(zeros))
                whole.update(zeros[:n])
                gap -= n
            digest = hashlib.sha256()
            fh.seek(first * block_size)
            left = min((last + 1) * block_size, size) - first * block_size
            while left:
                data = fh.read(min(left, 4 << 20))
                if not data:
                    raise BmapError(f"{image} shrank while it was being mapped")
                digest.update(data)
                whole.update(data)
                left -= len(data)
            pos = min((last + 1) * block_size, size)
            ranges.append(Range(first, last, digest.hexdigest()))
        gap = size - pos
        while gap:
            n = min(gap, len(zeros))
            whole.update(zeros[:n])
            gap -= n
    return BlockMap(size, block_size, tuple(ranges)), whole.hexdigest()


def render(bmap: BlockMap) -> str:
    """The .bmap XML text, with BmapFileChecksum filled in as bmaptool computes it."""

    def text(checksum: str) -> str:
        lines = [
            '<?xml version="1.0" ?>',
            '<bmap version="2.0">',
            f"    <ImageSize> {bmap.image_size} </ImageSize>",
            f"    <BlockSize> {bmap.block_size} </BlockSize>",
            f"    <BlocksCount> {bmap.blocks_count} </BlocksCount>",
            f"    <MappedBlocksCount> {bmap.mapped_blocks} </MappedBlocksCount>",
            "    <ChecksumType> sha256 </ChecksumType>",
            f"    <BmapFileChecksum> {checksum} </BmapFileChecksum>",
            "    <BlockMap>",
        ]
        for r in bmap.ranges:
            span = f"{r.first}" if r.first == r.last else f"{r.first}-{r.last}"
            lines.append(f'        <Range chksum="{r.sha256}"> {span} </Range>')
        lines += ["    </BlockMap>", "</bmap>", ""]
        return "\n".join(lines)

    return text(hashlib.sha256(text(_ZERO_SUM).encode()).hexdigest())


def _int(root: ET.Element, tag: str, where: str) -> int:
    node = root.find(tag)
    if node is None or node.text is None or not node.text.strip().isdigit():
        raise BmapError(f"{where}: <{tag}> is missing or not a number")
    value = int(node.text.strip())
    if value > 1 << 62:
        raise BmapError(f"{where}: <{tag}> {value} is out of range")
    return value


def parse(data: bytes, where: str = "bmap") -> BlockMap:
    """Parse and check a .bmap document; BmapError names what is wrong."""
    if len(data) > MAX_BMAP_BYTES:
        raise BmapError(f"{where}: {len(data)} bytes is too large for a block map")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise BmapError(f"{where}: DTDs and entities are not allowed in a block map")
    try:
        root = ET.fromstring(data)
    except ET.ParseError as exc:
        raise BmapError(f"{where}: not valid XML ({exc})") from exc
    if root.tag != "bmap":
        raise BmapError(f"{where}: root element is <{root.tag}>, expected <bmap>")
    version = root.get("version", "")
    if not re.fullmatch(r"2\.\d{1,3}", version):
        raise BmapError(f"{where}: unsupported bmap version {version!r} (2.x with SHA-256 only)")
    image_size = _int(root, "ImageSize", where)
    block_size = _int(root, "BlockSize", where)
    if block_size < 512 or block_size > 1 << 24 or block_size & (block_size - 1):
        raise BmapError(f"{where}: BlockSize {block_size} is not a power of two in 512..16M")
    blocks_count = _int(root, "BlocksCount", where)
    if blocks_count != (image_size + block_size - 1) // block_size:
        raise BmapError(f"{where}: BlocksCount {blocks_count} does not match ImageSize")
    ctype = (root.findtext("ChecksumType") or "").strip()
    if ctype != "sha256":
        raise BmapError(f"{where}: checksum type {ctype!r} unsupported (sha256 only)")
    declared = (root.findtext("BmapFileChecksum") or "").strip()
    if declared:
        if not _HEX64.fullmatch(declared):
            raise BmapError(f"{where}: BmapFileChecksum is not a SHA-256 hex digest")
        zeroed = data.replace(declared.encode(), _ZERO_SUM.encode(), 1)
        if hashlib.sha256(zeroed).hexdigest() != declared:
            raise BmapError(f"{where}: BmapFileChecksum does not match: the file was altered")
    block_map = root.find("BlockMap")
    if block_map is None:
        raise BmapError(f"{where}: <BlockMap> is missing")
    ranges: list[Range] = []
    for node in block_map.iter("Range"):
        m = _RANGE.match(node.text or "")
        if m is None:
            raise BmapError(f"{where}: bad range {(node.text or '').strip()!r}")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if last < first or last >= blocks_count:
            raise BmapError(f"{where}: range {first}-{last} lies outside the image")
        if ranges and first <= ranges[-1].last:
            raise BmapError(f"{where}: ranges overlap or are out of order at {first}")
        chk = node.get("chksum", "").lower()
        if not _HEX64.fullmatch(chk):
            raise BmapError(f"{where}: range {first}-{last} lacks a SHA-256 checksum")
        ranges.append(Range(first, last, chk))
    parsed = BlockMap(image_size, block_size, tuple(ranges))
    mapped = root.findtext("MappedBlocksCount")
    if mapped is not None and mapped.strip() != str(parsed.mapped_blocks):
        raise BmapError(f"{where}: MappedBlocksCount does not match the ranges")
    return parsed


def load(path: Path) -> BlockMap:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_BMAP_BYTES + 1)
    except OSError as exc:
        raise BmapError(f"cannot read block map {path}: {exc.strerror}") from exc
    return parse(data, str(path))
