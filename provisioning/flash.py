"""``flash``: write an image to a card safely, then read it back and compare.

Before anything is written the target is checked: a block device must be a whole disk, not
hold ``/``, have nothing mounted, no holders (LVM, RAID, dm), be removable media (unless
forced) and be large enough; the image must match its ``.sha256`` when one lies beside it. The
device is opened with O_EXCL. With a ``.bmap`` only mapped blocks are written and each range's
SHA-256 is checked as it streams. The read-back drops the page cache first
(posix_fadvise DONTNEED after fsync, on a fresh descriptor), so it reads what the card holds.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provisioning import bmap as bmapmod
from provisioning import compress
from provisioning.errors import FlashError

Progress = Callable[[str, int, int], None]
"""(phase, done, total) with phase ``check``, ``write`` or ``verify``."""
_SHA_LINE = re.compile(r"^([0-9a-fA-F]{64})[ \t]+\*?(\S.*)$")


@dataclass(frozen=True)
class Target:
    """What a DEVICE argument is: a regular file, or a whole-disk block device."""

    path: Path
    block: bool
    name: str
    """Kernel name (sdb, mmcblk0, loop3) for block devices, the file name otherwise."""
    size: int | None
    removable: bool
    description: str


@dataclass(frozen=True)
class FlashResult:
    target: Target
    image_size: int
    written: int
    sha256: str | None
    """SHA-256 of the uncompressed image, when it was computed (compressed or .sha256)."""
    bmap_used: bool
    check_seconds: float
    write_seconds: float
    verify_seconds: float


# -- sysfs / procfs --------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _sysfs_dir(rdev: int) -> Path:
    return Path(f"/sys/dev/block/{os.major(rdev)}:{os.minor(rdev)}").resolve()


def _disk_of(sys_dir: Path) -> Path:
    """The whole-disk sysfs dir of a disk or partition."""
    return sys_dir.parent if (sys_dir / "partition").exists() else sys_dir


def _parts(disk: Path) -> list[Path]:
    return sorted(p for p in disk.iterdir() if (p / "partition").exists())


def _devnum(sys_dir: Path) -> str:
    return _read(sys_dir / "dev")


def _underlying_disks(sys_dir: Path, seen: set[Path] | None = None) -> set[str]:
    """Names of the physical disks under a block device (follows dm/md slaves)."""
    seen = seen if seen is not None else set()
    disk = _disk_of(sys_dir)
    if disk in seen:
        return set()
    seen.add(disk)
    slaves = [p.resolve() for p in (sys_dir / "slaves").glob("*")] if sys_dir.exists() else []
    if not slaves:
        return {disk.name}
    out: set[str] = set()
    for s in slaves:
        out |= _underlying_disks(s, seen)
    return out


def root_disks(root_path: str = "/") -> set[str]:
    """Kernel names of the disks holding ``root_path``'s filesystem (empty when virtual)."""
    st_dev = os.stat(root_path).st_dev
    if os.major(st_dev) == 0:
        # overlay/tmpfs: use the mount source when it is a device node
        for line in _read(Path("/proc/self/mountinfo")).splitlines():
            fields = line.split()
            if len(fields) > 4 and fields[4] == root_path:
                source = line.split(" - ", 1)[1].split()[1] if " - " in line else ""
                if source.startswith("/dev/") and os.path.exists(source):
                    rdev = os.stat(source).st_rdev
                    return _underlying_disks(_sysfs_dir(rdev))
        return set()
    return _underlying_disks(_sysfs_dir(st_dev))


def mounted_devnums() -> dict[str, str]:
    """major:minor -> mount point for every mounted block device, plus swap devices."""
    out: dict[str, str] = {}
    for line in _read(Path("/proc/self/mountinfo")).splitlines():
        fields = line.split()
        if len(fields) > 4:
            out.setdefault(fields[2], fields[4])
    for line in _read(Path("/proc/swaps")).splitlines()[1:]:
        name = line.split()[0] if line.split() else ""
        if name.startswith("/dev/") and os.path.exists(name):
            rdev = os.stat(name).st_rdev
            out.setdefault(f"{os.major(rdev)}:{os.minor(rdev)}", "[swap]")
    return out


def inspect(device: Path, *, root_path: str = "/") -> tuple[Target, list[str], list[str]]:
    """The target, the problems that refuse it, and those ``--force-non-removable`` lifts."""
    try:
        st = os.stat(device)
    except FileNotFoundError:
        return Target(device, False, device.name, None, False, f"new file {device}"), [], []
    except OSError as exc:
        raise FlashError(f"cannot inspect {device}: {exc.strerror}") from exc
    if stat.S_ISREG(st.st_mode):
        return Target(device, False, device.name, None, False, f"file {device}"), [], []
    if not stat.S_ISBLK(st.st_mode):
        raise FlashError(f"{device} is neither a block device nor a regular file")
    sys_dir = _sysfs_dir(st.st_rdev)
    refuse: list[str] = []
    if (sys_dir / "partition").exists():
        disk = _disk_of(sys_dir)
        raise FlashError(
            f"{device} is partition {sys_dir.name} of /dev/{disk.name}: "
            f"give the whole disk (/dev/{disk.name})"
        )
    name = sys_dir.name
    size = int(_read(sys_dir / "size") or 0) * 512
    model = " ".join(
        filter(None, [_read(sys_dir / "device" / "vendor"), _read(sys_dir / "device" / "model")])
    )
    usb = "/usb" in str((sys_dir / "device").resolve()) if (sys_dir / "device").exists() else False
    removable = _read(sys_dir / "removable") == "1" or usb or name.startswith("mmcblk")
    description = f"/dev/{name} ({size / 1e9:.1f} GB{', ' + model if model else ''}" + (
        ", removable)" if removable else ", NOT removable)"
    )
    target = Target(device, True, name, size, removable, description)
    if name in root_disks(root_path):
        refuse.append(f"/dev/{name} holds the running system's root filesystem ({root_path})")
    mounts = mounted_devnums()
    for node in [sys_dir, *_parts(sys_dir)]:
        num = _devnum(node)
        if num in mounts:
            refuse.append(f"/dev/{node.name} is mounted on {mounts[num]}: unmount it first")
        holders = sorted(p.name for p in (node / "holders").glob("*"))
        if holders:
            refuse.append(f"/dev/{node.name} is in use by {', '.join(holders)} (LVM/RAID/dm)")
    forceable = []
    if not removable:
        forceable.append(
            f"/dev/{name} is not a removable disk (pass --force-non-removable if you are sure)"
        )
    return target, refuse, forceable


# -- image side ------------------------------------------------------------------------------


def sidecar(image: Path, suffix: str) -> Path | None:
    for cand in (
        image.with_name(image.name + suffix),
        image.with_name(compress.stripped_name(image) + suffix),
    ):
        if cand.is_file():
            return cand
    return None


def parse_sha256_file(text: str, where: str) -> tuple[str, str]:
    """(hex digest, file name) from the first line of a sha256sum file."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    m = _SHA_LINE.match(line)
    if m is None:
        raise FlashError(f"{where}: not a sha256sum line ('HEX  NAME')")
    return m.group(1).lower(), m.group(2).strip()


def _hash_stream(image: Path, progress: Progress | None, total: int | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with compress.open_image(image) as reader:
        for chunk in compress.iter_chunks(reader):
            digest.update(chunk)
            size += len(chunk)
            if progress:
                progress("check", size, total or 0)
    return digest.hexdigest(), size


def _hash_raw(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_image(
    image: Path, block_map: bmapmod.BlockMap | None, progress: Progress | None
) -> tuple[int | None, str | None]:
    """(uncompressed size if known, expected sha256 of the uncompressed image if known)."""
    kind = compress.detect(image)
    size: int | None = block_map.image_size if block_map else None
    if size is None and kind == "raw":
        size = image.stat().st_size
    sha_file = sidecar(image, ".sha256")
    if sha_file is not None:
        expected, name = parse_sha256_file(sha_file.read_text(errors="replace"), str(sha_file))
        if name == image.name and kind != "raw":
            if _hash_raw(image) != expected:
                raise FlashError(
                    f"{image} does not match {sha_file}: the download is damaged, fetch it again"
                )
            return size, None
        got, got_size = _hash_stream(image, progress, size)
        if got != expected:
            raise FlashError(
                f"{image} does not match {sha_file}: the image is damaged or not the one "
                "the hash was made for; refusing to write it"
            )
        if size is not None and got_size != size:
            raise FlashError(f"{image} holds {got_size} bytes but its block map says {size}")
        return got_size, expected
    if size is None:
        _, size = _hash_stream(image, progress, None)
    return size, None


# -- writing ---------------------------------------------------------------------------------


def _open_target(target: Target, image_size: int, bmap_used: bool) -> int:
    try:
        if target.block:
            return os.open(target.path, os.O_WRONLY | os.O_EXCL | os.O_CLOEXEC)
        fd = os.open(target.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if bmap_used:
            os.ftruncate(fd, 0)  # unmapped blocks must read as zeros
        os.ftruncate(fd, image_size)
        return fd
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise FlashError(
                f"{target.path} is busy (mounted or opened by another program): "
                "close it and unmount its partitions"
            ) from exc
        raise FlashError(f"cannot open {target.path} for writing: {exc.strerror}") from exc


def _write_all(fd: int, data: memoryview, offset: int, target: Target) -> None:
    while data:
        try:
            n = os.pwrite(fd, data, offset)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise FlashError(f"{target.path} is full: it is smaller than the image") from exc
            raise FlashError(f"writing {target.path} failed at byte {offset}: {exc}") from exc
        data = data[n:]
        offset += n


class _Hasher:
    """SHA-256 of the whole stream and of each block-map range, fed chunk by chunk in order.

    It runs on a worker thread (hashlib releases the GIL), so hashing overlaps the writes.
    """

    def __init__(self, image: Path, block_map: bmapmod.BlockMap | None) -> None:
        self.image = image
        self.digest = hashlib.sha256()
        self.spans = [(*block_map.byte_span(r), r) for r in block_map.ranges] if block_map else []
        self.i = 0
        self.range_hash = hashlib.sha256()

    def feed(self, chunk: bytes | memoryview, pos: int) -> None:
        self.digest.update(chunk)
        view = memoryview(chunk)
        end = pos + len(chunk)
        while self.i < len(self.spans):
            start, length, rng = self.spans[self.i]
            lo, hi = max(start, pos), min(start + length, end)
            if lo >= end:
                return
            if lo < hi:
                self.range_hash.update(view[lo - pos : hi - pos])
            if start + length > end:
                return
            if self.range_hash.hexdigest() != rng.sha256:
                raise FlashError(
                    f"{self.image} does not match its block map in blocks "
                    f"{rng.first}-{rng.last}: the image or the .bmap is damaged"
                )
            self.range_hash = hashlib.sha256()
            self.i += 1


def _chunks(image: Path, *, reuse: bool) -> Iterator[bytes | memoryview]:
    """The image's uncompressed bytes in CHUNK pieces.

    With ``reuse`` (a raw image nobody keeps chunks of) one buffer is read into again and
    again, as dd does, instead of allocating a fresh 4 MiB object per chunk.
    """
    if not reuse:
        with compress.open_image(image) as reader:
            yield from compress.iter_chunks(reader)
        return
    buf = bytearray(compress.CHUNK)
    view = memoryview(buf)
    try:
        fh = image.open("rb", buffering=0)
    except OSError as exc:
        raise FlashError(f"cannot read image {image}: {exc.strerror}") from exc
    with fh:
        while True:
            n = 0
            while n < len(buf):
                got = fh.readinto(view[n:])
                if not got:
                    break
                n += got
            if n == 0:
                return
            yield view[:n]


def _write(
    image: Path,
    fd: int,
    target: Target,
    size: int,
    block_map: bmapmod.BlockMap | None,
    progress: Progress | None,
    hash_stream: bool,
) -> tuple[str | None, int]:
    """Stream the image into ``fd``; (sha256 of the image if hashed, bytes written).

    A raw image is copied as dd would, without hashing: it is verified against itself (or
    its block map) after the read-back. A compressed stream cannot be re-read cheaply, so it
    is hashed on a worker thread while it is written.
    """
    hasher = _Hasher(image, block_map) if hash_stream else None
    spans = [block_map.byte_span(r) for r in block_map.ranges] if block_map else []
    span_i = 0
    pos = 0
    written = 0
    pending: deque[Future[None]] = deque()
    with ThreadPoolExecutor(max_workers=1) as pool:
        for chunk in _chunks(image, reuse=hasher is None):
            end = pos + len(chunk)
            if end > size:
                raise FlashError(f"{image} is larger than the {size} bytes it claims")
            if hasher is not None:
                pending.append(pool.submit(hasher.feed, chunk, pos))
            while len(pending) > 4 or (pending and pending[0].done()):
                pending.popleft().result()  # bounds memory; raises a mismatch early
            view = memoryview(chunk)
            if block_map is None:
                _write_all(fd, view, pos, target)
                written += len(chunk)
            while span_i < len(spans):
                start, length = spans[span_i]
                lo, hi = max(start, pos), min(start + length, end)
                if lo >= end:
                    break
                if lo < hi:
                    _write_all(fd, view[lo - pos : hi - pos], lo, target)
                    written += hi - lo
                if start + length > end:
                    break
                span_i += 1
            pos = end
            if progress:
                progress("write", pos, size)
        while pending:
            pending.popleft().result()
    if pos != size:
        raise FlashError(f"{image} ended after {pos} bytes, expected {size}: it is truncated")
    try:
        os.fsync(fd)
    except OSError as exc:
        raise FlashError(f"flushing {target.path} failed: {exc.strerror}") from exc
    return (hasher.digest.hexdigest() if hasher else None), written


def _sha256_range(fd: int, start: int, length: int, what: Path) -> str:
    digest = hashlib.sha256()
    off = start
    while off < start + length:
        data = os.pread(fd, min(4 << 20, start + length - off), off)
        if not data:
            raise FlashError(f"{what} ends at byte {off}: it is shorter than the image")
        digest.update(data)
        off += len(data)
    return digest.hexdigest()


def _verify(
    target: Target,
    image: Path,
    size: int,
    sha256: str | None,
    block_map: bmapmod.BlockMap | None,
    progress: Progress | None,
) -> None:
    """Read the device back (page cache dropped) and compare it with the image."""
    raw = compress.detect(image) == "raw"
    fd = os.open(target.path, os.O_RDONLY | os.O_CLOEXEC)
    img_fd = os.open(image, os.O_RDONLY | os.O_CLOEXEC) if raw else -1
    try:
        # The written pages are clean after fsync: drop them so reads come from the medium.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        if block_map is not None or sha256 is not None:
            spans = (
                [(*block_map.byte_span(r), r.sha256) for r in block_map.ranges]
                if block_map
                else [(0, size, sha256 or "")]
            )
            total = sum(s[1] for s in spans)
            done = 0
            for start, length, want in spans:
                if _sha256_range(fd, start, length, target.path) != want:
                    if raw and _sha256_range(img_fd, start, length, image) != want:
                        raise FlashError(
                            f"{image} does not match its block map at bytes {start}-"
                            f"{start + length}: the image or the .bmap is damaged"
                        )
                    raise FlashError(
                        f"read-back of {target.path} differs from the image at bytes "
                        f"{start}-{start + length}: the card may be failing or fake"
                    )
                done += length
                if progress:
                    progress("verify", done, total)
            return
        # A raw image without hash or map: compare the device with the image, byte for byte.
        off = 0
        while off < size:
            want_bytes = os.pread(img_fd, min(4 << 20, size - off), off)
            got = os.pread(fd, len(want_bytes), off)
            if not want_bytes or got != want_bytes:
                raise FlashError(
                    f"read-back of {target.path} differs from {image} near byte {off}: "
                    "the card may be failing or fake"
                )
            off += len(want_bytes)
            if progress:
                progress("verify", off, size)
    finally:
        os.close(fd)
        if img_fd >= 0:
            os.close(img_fd)


def flash(
    image: Path,
    device: Path,
    *,
    force_non_removable: bool = False,
    progress: Progress | None = None,
    root_path: str = "/",
) -> FlashResult:
    """Write ``image`` to ``device`` (block device or file) after every safety check."""
    if not image.is_file():
        raise FlashError(f"image {image} does not exist")
    bmap_path = sidecar(image, ".bmap")
    block_map = bmapmod.load(bmap_path) if bmap_path else None
    target, refuse, forceable = inspect(device, root_path=root_path)
    if refuse:
        raise FlashError(f"refusing to write {target.description}: {'; '.join(refuse)}")
    if forceable and not force_non_removable:
        raise FlashError(f"refusing to write {target.description}: {'; '.join(forceable)}")
    t0 = time.monotonic()
    size, expected = check_image(image, block_map, progress)
    assert size is not None
    if target.size is not None and target.size < size:
        raise FlashError(
            f"{target.description} is smaller than the image ({size / 1e9:.2f} GB): "
            "use a larger card"
        )
    t1 = time.monotonic()
    hash_stream = compress.detect(image) != "raw"
    fd = _open_target(target, size, block_map is not None)
    try:
        digest, written = _write(image, fd, target, size, block_map, progress, hash_stream)
    finally:
        os.close(fd)
    if digest is not None and expected is not None and digest != expected:
        raise FlashError(f"{image} changed while it was written: flash it again")
    t2 = time.monotonic()
    _verify(target, image, size, digest or expected, block_map, progress)
    t3 = time.monotonic()
    return FlashResult(
        target, size, written, digest, block_map is not None, t1 - t0, t2 - t1, t3 - t2
    )
