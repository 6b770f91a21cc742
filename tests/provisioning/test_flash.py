from __future__ import annotations

import contextlib
import gzip
import lzma
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from provisioning import bmap, flash
from provisioning.cli import main
from provisioning.errors import FlashError, FleetError
from tests.support import require_binary, require_root


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sparse 12 MiB 'image' with scattered data, its .sha256 and .bmap."""
    path = tmp_path_factory.mktemp("flash") / "box.img"
    with path.open("wb") as fh:
        fh.truncate(12 << 20)
        for off in (0, 1 << 20, (5 << 20) + 512, (12 << 20) - 4096):
            fh.seek(off)
            fh.write(os.urandom(3000))
    digest = flash._hash_raw(path)
    path.with_name("box.img.sha256").write_text(f"{digest}  box.img\n")
    path.with_name("box.img.bmap").write_text(bmap.render(bmap.create(path)))
    return path


def _copy_set(src: Path, dest_dir: Path, *, with_bmap: bool = True, kind: str = "") -> Path:
    """Copy the image (optionally compressed) and its sidecars into dest_dir."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    data = src.read_bytes()
    compressors = {
        "xz": lzma.compress,
        "gz": gzip.compress,
        "zst": zstandard.ZstdCompressor().compress,
    }
    img = dest_dir / (src.name + (f".{kind}" if kind else ""))
    img.write_bytes(compressors[kind](data) if kind else data)
    (dest_dir / "box.img.sha256").write_text(src.with_name("box.img.sha256").read_text())
    if with_bmap:
        (dest_dir / "box.img.bmap").write_text(src.with_name("box.img.bmap").read_text())
    return img


@pytest.mark.parametrize("kind", ["", "xz", "gz", "zst"])
@pytest.mark.parametrize("with_bmap", [True, False])
def test_flash_to_file(tmp_path: Path, built: Path, kind: str, with_bmap: bool) -> None:
    img = _copy_set(built, tmp_path / "in", with_bmap=with_bmap, kind=kind)
    dest = tmp_path / "card.img"
    dest.write_bytes(os.urandom(1 << 20))  # old content must not survive in a file target
    result = flash.flash(img, dest)
    assert dest.read_bytes() == built.read_bytes()
    assert result.bmap_used is with_bmap
    assert result.written == (
        bmap.load(built.with_name("box.img.bmap")).mapped_blocks * 4096
        if with_bmap
        else built.stat().st_size
    )
    again = flash.flash(img, dest)  # idempotent
    assert again.sha256 == result.sha256


def test_hash_mismatch_is_refused_before_writing(tmp_path: Path, built: Path) -> None:
    img = _copy_set(built, tmp_path / "in", with_bmap=False)
    data = bytearray(img.read_bytes())
    data[100] ^= 1
    img.write_bytes(bytes(data))
    dest = tmp_path / "card.img"
    with pytest.raises(FlashError, match=r"does not match .*box.img.sha256"):
        flash.flash(img, dest)
    assert not dest.exists()


def test_bmap_mismatch_is_caught(tmp_path: Path, built: Path) -> None:
    img = _copy_set(built, tmp_path / "in")
    (tmp_path / "in" / "box.img.sha256").unlink()
    data = bytearray(img.read_bytes())
    data[(1 << 20) + 10] ^= 1
    img.write_bytes(bytes(data))
    with pytest.raises(FlashError, match="does not match its block map"):
        flash.flash(img, tmp_path / "card.img")


@pytest.mark.parametrize("kind", ["xz", "gz", "zst"])
def test_truncated_and_corrupt_compressed_images(tmp_path: Path, built: Path, kind: str) -> None:
    img = _copy_set(built, tmp_path / "in", kind=kind)
    whole = img.read_bytes()
    img.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(FleetError, match=r"truncated|corrupt"):
        flash.flash(img, tmp_path / "card.img")
    bad = bytearray(whole)
    for i in range(64, len(bad) - 64, 101):
        bad[i] ^= 0xA5
    img.write_bytes(bytes(bad))
    with pytest.raises(FleetError, match=r"corrupt|truncated|damaged"):
        flash.flash(img, tmp_path / "card.img")


def test_wrongly_compressed_image(tmp_path: Path, built: Path) -> None:
    img = tmp_path / "box.img.xz"
    img.write_bytes(gzip.compress(built.read_bytes()))
    with pytest.raises(FleetError, match=r"named \.xz but holds gz data"):
        flash.flash(img, tmp_path / "card.img")


@given(st.text(max_size=200))
def test_sha256_file_parser(text: str) -> None:
    try:
        digest, name = flash.parse_sha256_file(text, "x.sha256")
    except FlashError:
        return
    assert len(digest) == 64 and name


# -- block devices ---------------------------------------------------------------------------


@contextlib.contextmanager
def loop_device(backing: Path, size: int, *, partscan: bool = False) -> Iterator[str]:
    require_root("loop devices")
    losetup = require_binary("losetup", "util-linux")
    with backing.open("wb") as fh:
        fh.truncate(size)
    args = [losetup, "--find", "--show", *(["--partscan"] if partscan else []), str(backing)]
    dev = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
    try:
        yield dev
    finally:
        subprocess.run([losetup, "-d", dev], check=False)


@contextlib.contextmanager
def mounted_ext4(dev: str, where: Path) -> Iterator[Path]:
    mke2fs = require_binary("mke2fs", "e2fsprogs")
    subprocess.run([mke2fs, "-q", "-t", "ext4", dev], check=True)
    where.mkdir()
    subprocess.run(["mount", dev, str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_flash_loop_device_needs_force_then_verifies(tmp_path: Path, built: Path) -> None:
    img = _copy_set(built, tmp_path / "in")
    with loop_device(tmp_path / "disk", 16 << 20) as dev:
        with pytest.raises(FlashError, match=r"not a removable disk.*--force-non-removable"):
            flash.flash(img, Path(dev))
        result = flash.flash(img, Path(dev), force_non_removable=True)
        assert result.target.block and result.target.name == Path(dev).name
        with open(dev, "rb") as fh:
            assert fh.read(built.stat().st_size) == built.read_bytes()
        cli = CliRunner().invoke(main, ["flash", str(img), dev, "--yes", "--force-non-removable"])
        assert cli.exit_code == 0, cli.output
        assert f"wrote /dev/{Path(dev).name}" in cli.output and "verified" in cli.output


def test_refusals_on_block_devices(tmp_path: Path, built: Path) -> None:
    img = _copy_set(built, tmp_path / "in")
    with (
        loop_device(tmp_path / "small", 4 << 20) as small,
        pytest.raises(FlashError, match="smaller than the image"),
    ):
        flash.flash(img, Path(small), force_non_removable=True)
    with (
        loop_device(tmp_path / "sys", 32 << 20) as sysdisk,
        mounted_ext4(sysdisk, tmp_path / "mnt") as mnt,
    ):
        with pytest.raises(FlashError, match=r"is mounted on .*mnt"):
            flash.flash(img, Path(sysdisk), force_non_removable=True)
        # The mounted loop device stands for the disk holding the running system's /.
        with pytest.raises(FlashError, match="holds the running system's root filesystem"):
            flash.flash(img, Path(sysdisk), force_non_removable=True, root_path=str(mnt))
        cli = CliRunner().invoke(
            main, ["flash", str(img), sysdisk, "--yes", "--force-non-removable"]
        )
        assert cli.exit_code == 1 and "is mounted on" in cli.output


def test_partition_is_refused(tmp_path: Path, built: Path) -> None:
    sfdisk = require_binary("sfdisk", "fdisk")
    img = _copy_set(built, tmp_path / "in")
    with loop_device(tmp_path / "parted", 32 << 20, partscan=True) as dev:
        subprocess.run([sfdisk, "-q", dev], input=b"2048,20000,83\n", check=True)
        subprocess.run(["partx", "-u", dev], check=False)
        part = Path(f"{dev}p1")
        if not part.exists():
            pytest.skip("the kernel did not create partition nodes for the loop device")
        with pytest.raises(FlashError, match="give the whole disk"):
            flash.flash(img, part, force_non_removable=True)


def test_busy_device_is_refused_by_o_excl(tmp_path: Path, built: Path) -> None:
    img = _copy_set(built, tmp_path / "in")
    with loop_device(tmp_path / "busy", 16 << 20) as dev:
        holder = os.open(dev, os.O_RDONLY | os.O_EXCL)
        try:
            with pytest.raises(FlashError, match="busy"):
                flash.flash(img, Path(dev), force_non_removable=True)
        finally:
            os.close(holder)


def test_bare_raw_image_is_compared_byte_for_byte(tmp_path: Path, built: Path) -> None:
    img = tmp_path / "bare.img"
    img.write_bytes(built.read_bytes())
    dest = tmp_path / "card.img"
    result = flash.flash(img, dest)
    assert result.sha256 is None and dest.read_bytes() == img.read_bytes()
    cli = CliRunner().invoke(main, ["flash", str(img), str(dest), "--yes"])
    assert cli.exit_code == 0 and "identical to the image" in cli.output
    assert f"wrote file {dest}" in cli.output
