"""Synthetic Raspberry Pi OS images: MBR, FAT32 boot partition, ext4 root, made by real tools."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from provisioning.mbr import SECTOR, build_mbr
from tests.support import require_binary

BOOT_START = 8192  # sectors, as Raspberry Pi OS images have it
BOOT_SECTORS = 36 << 11  # 36 MiB: just enough clusters for FAT32 with 512-byte clusters
ROOT_SECTORS = 24 << 11  # 24 MiB
EPOCH = "1700000000"


def _run(*cmd: str, env: dict[str, str] | None = None) -> None:
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, **(env or {})})


def make_pi_image(
    dest: Path,
    *,
    cloud_init: bool = False,
    root_sectors: int = ROOT_SECTORS,
    payload: int = 0,
    boot_mount: str = "boot/firmware",
) -> Path:
    """Write an image with the Raspberry Pi OS partition layout to ``dest``.

    ``payload`` bytes of random data in ``/usr/lib/payload`` stand in for a real root's files.
    """
    mkfs_vfat = require_binary("mkfs.vfat", "dosfstools")
    mcopy = require_binary("mcopy", "mtools")
    mke2fs = require_binary("mke2fs", "e2fsprogs")
    work = dest.parent / (dest.name + ".parts")
    work.mkdir(parents=True, exist_ok=True)
    boot = work / "boot.fat"
    boot.unlink(missing_ok=True)
    with boot.open("wb") as fh:
        fh.truncate(BOOT_SECTORS * SECTOR)
    _run(mkfs_vfat, "-F", "32", "-s", "1", "-n", "bootfs", "-i", "12345678", str(boot))
    files = {
        "cmdline.txt": "console=serial0,115200 console=tty1 root=PARTUUID=12345678-02 "
        "rootfstype=ext4 fsck.repair=yes rootwait\n",
        "config.txt": "[all]\narm_64bit=1\n",
    }
    if cloud_init:
        files["user-data"] = "#cloud-config\n"
        files["meta-data"] = "instance-id: rpios-image\n"
        files["network-config"] = "network:\n  version: 2\n"
    for name, text in files.items():
        src = work / name
        src.write_text(text)
        env = {"MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": EPOCH}
        _run(mcopy, "-i", str(boot), str(src), f"::/{name}", env=env)
    tree = work / "rootfs"
    for d in (
        "etc/systemd/system/multi-user.target.wants",
        "usr/bin",
        "var/lib",
        "home",
        "opt",
        boot_mount,
    ):
        (tree / d).mkdir(parents=True, exist_ok=True)
    (tree / "etc/hostname").write_text("raspberrypi\n")
    (tree / "etc/os-release").write_text('PRETTY_NAME="Synthetic Raspberry Pi OS Lite"\n')
    if payload:
        (tree / "usr/lib").mkdir(parents=True, exist_ok=True)
        with (tree / "usr/lib/payload").open("wb") as fh:
            for _ in range(0, payload, 1 << 20):
                fh.write(os.urandom(1 << 20))
    root = work / "root.ext4"
    root.unlink(missing_ok=True)
    _run(mke2fs, "-q", "-t", "ext4", "-L", "rootfs", "-U", "0b6d4a2c-1f2e-4b3a-9c8d-7e6f5a4b3c2d",
         "-E", "root_owner=0:0,hash_seed=0b6d4a2c-1f2e-4b3a-9c8d-7e6f5a4b3c2d", "-d", str(tree),
         str(root), f"{root_sectors // 2}k", env={"E2FSPROGS_FAKE_TIME": EPOCH})  # fmt: skip
    root_start = BOOT_START + BOOT_SECTORS
    table = build_mbr(
        [(0x0C, BOOT_START, BOOT_SECTORS, False), (0x83, root_start, root_sectors, False)],
        disk_id=0x12345678,
    )
    with dest.open("wb") as out:
        out.write(table)
        for start, part in ((BOOT_START, boot), (root_start, root)):
            out.seek(start * SECTOR)
            with part.open("rb") as src_fh:
                while chunk := src_fh.read(1 << 20):
                    if chunk.count(0) == len(chunk):
                        out.seek(len(chunk), os.SEEK_CUR)
                    else:
                        out.write(chunk)
        out.truncate((root_start + root_sectors) * SECTOR)
    return dest
