"""MBR partition tables (the layout of Raspberry Pi OS images), parsed without any tool.

A Raspberry Pi OS image is an MBR disk: partition 1 is the FAT boot partition (type 0x0c or
0x0b/0x0e/0x06), partition 2 the ext4 root (type 0x83). Only the four primary entries matter.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import dataclass

from provisioning.errors import ImageError

SECTOR = 512
_SIGNATURE = b"\x55\xaa"
_ENTRY = struct.Struct("<B3sB3sII")
FAT_TYPES = frozenset({0x01, 0x04, 0x06, 0x0B, 0x0C, 0x0E})
LINUX_TYPE = 0x83
_EXTENDED_TYPES = frozenset({0x05, 0x0F, 0x85})
_GPT_PROTECTIVE = 0xEE


@dataclass(frozen=True, slots=True)
class Partition:
    """One primary MBR partition."""

    number: int
    """1-4, as the kernel names it (``p1`` …)."""
    type: int
    """The MBR type byte (0x0c FAT32 LBA, 0x83 Linux, …)."""
    bootable: bool
    start_lba: int
    sectors: int

    @property
    def offset(self) -> int:
        """Byte offset of the partition in the image."""
        return self.start_lba * SECTOR

    @property
    def size(self) -> int:
        return self.sectors * SECTOR

    @property
    def end(self) -> int:
        return self.offset + self.size


def parse_mbr(sector: bytes, image_size: int | None = None) -> list[Partition]:
    """Parse the first sector of a disk; raises ImageError for anything that is not a sane MBR.

    ``image_size`` (bytes), when known, bounds every partition.
    """
    if len(sector) < SECTOR:
        raise ImageError(f"image is {len(sector)} bytes, too short for a partition table")
    if sector[510:512] != _SIGNATURE:
        raise ImageError("no MBR partition table (boot signature 55aa missing at byte 510)")
    parts: list[Partition] = []
    for i in range(4):
        status, _, ptype, _, start, count = _ENTRY.unpack_from(sector, 446 + 16 * i)
        if ptype == 0 or count == 0:
            continue
        if status not in (0x00, 0x80):
            raise ImageError(f"partition {i + 1}: bad status byte {status:#04x}")
        if ptype == _GPT_PROTECTIVE:
            raise ImageError("image has a GPT partition table; a Raspberry Pi OS image uses MBR")
        if ptype in _EXTENDED_TYPES:
            continue
        if start == 0:
            raise ImageError(f"partition {i + 1} starts at sector 0, over the partition table")
        part = Partition(i + 1, ptype, status == 0x80, start, count)
        if image_size is not None and part.end > image_size:
            raise ImageError(
                f"partition {i + 1} ends at byte {part.end}, beyond the image ({image_size} "
                "bytes): the image is truncated"
            )
        parts.append(part)
    ordered = sorted(parts, key=lambda p: p.start_lba)
    for a, b in itertools.pairwise(ordered):
        if b.start_lba < a.start_lba + a.sectors:
            raise ImageError(f"partitions {a.number} and {b.number} overlap")
    return parts


def pi_layout(parts: list[Partition]) -> tuple[Partition, Partition]:
    """The (boot, root) partitions of a Raspberry Pi OS layout; ImageError when absent."""
    boot = next((p for p in parts if p.number == 1), None)
    root = next((p for p in parts if p.number == 2), None)
    if boot is None or boot.type not in FAT_TYPES:
        raise ImageError(
            "partition 1 is not a FAT boot partition: not a Raspberry Pi OS image layout"
        )
    if root is None or root.type != LINUX_TYPE:
        raise ImageError(
            "partition 2 is not a Linux (0x83) root partition: not a Raspberry Pi OS image layout"
        )
    return boot, root


def build_mbr(entries: list[tuple[int, int, int, bool]], disk_id: int = 0) -> bytes:
    """An MBR sector from (type, start_lba, sectors, bootable) tuples (used for tests/images)."""
    if len(entries) > 4:
        raise ValueError("an MBR holds at most 4 primary partitions")
    sector = bytearray(SECTOR)
    struct.pack_into("<I", sector, 440, disk_id)
    for i, (ptype, start, count, boot) in enumerate(entries):
        chs = b"\xfe\xff\xff"
        _ENTRY.pack_into(sector, 446 + 16 * i, 0x80 if boot else 0, chs, ptype, chs, start, count)
    sector[510:512] = _SIGNATURE
    return bytes(sector)
