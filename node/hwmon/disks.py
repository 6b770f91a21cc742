"""The data disk: presence, read-only remounts, free space and I/O errors.

:class:`DiskProbe` is the interface; :class:`LinuxDiskProbe` reads ``<root>/proc/self/mounts``,
``statvfs`` of the data dir and ``<root>/sys/block/<disk>/device/ioerr_cnt``;
:class:`FakeDiskProbe` returns what a test set. :class:`DiskPolicy` (sans-I/O) turns readings
into a state and the work limits that go with it:

=========  ===================================================================
missing    the data disk is gone: no uploads, no audits, no background scans
read_only  the kernel remounted it read-only: no uploads, no background scans
low_space  below ``low_space_percent`` free: no new uploads
ok         nothing held back
=========  ===================================================================

A disk that comes back is picked up at the next poll; the agent needs no restart.
"""

from __future__ import annotations

import os
import platform
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from node.config import Config
from node.hwmon.errors import SensorError
from node.hwmon.parse import (
    DiskStat,
    Mount,
    parse_block_stat,
    parse_diskstats,
    parse_ioerr_cnt,
    parse_mounts,
)
from node.hwmon.sensors import libc, read_text
from node.limits import Restriction

_IOPRIO_SYSCALL = {"x86_64": 251, "aarch64": 30, "armv7l": 314, "armv6l": 314, "i686": 289}
_IOPRIO_CLASS_IDLE = 3
_IOPRIO_CLASS_SHIFT = 13
_IOPRIO_WHO_PROCESS = 1


def set_idle_io_priority(tid: int = 0) -> bool:
    """Put a thread (0: the calling one) in the idle I/O class; False when not possible.

    Background scans (scrub, SMART) call this so that they only use the disk when nothing
    else does. Linux I/O priorities are per thread.
    """
    nr = _IOPRIO_SYSCALL.get(platform.machine())
    if nr is None:
        return False
    prio = _IOPRIO_CLASS_IDLE << _IOPRIO_CLASS_SHIFT
    try:
        return int(libc().syscall(nr, _IOPRIO_WHO_PROCESS, tid, prio)) == 0
    except (OSError, AttributeError):
        return False


LIMIT_REASON = "data_disk"
"""The reason under which the monitor's disk restrictions go into ``ctx.limits``."""


def data_disk_dir(cfg: Config, data_dir: Path) -> Path:
    """The directory that must live on the data disk: ``[storage] path``, else the data dir."""
    path = getattr(getattr(cfg, "storage", None), "path", "")
    return Path(path) if isinstance(path, str) and path else data_dir


@dataclass(frozen=True, slots=True)
class DiskReading:
    data_dir: str
    present: bool
    problem: str = ""
    """Why the disk counts as missing."""
    mountpoint: str | None = None
    device: str | None = None
    fstype: str | None = None
    read_only: bool = False
    total_bytes: int | None = None
    free_bytes: int | None = None
    io_errors: int | None = None
    on_root_fs: bool = False
    stat: DiskStat | None = None
    """I/O counters of the whole disk (``/sys/block/<disk>/stat``)."""

    @property
    def free_percent(self) -> float | None:
        if not self.total_bytes or self.free_bytes is None:
            return None
        return 100.0 * self.free_bytes / self.total_bytes

    def to_json(self) -> dict[str, Any]:
        pct = self.free_percent
        return {
            "data_dir": self.data_dir,
            "present": self.present,
            "problem": self.problem,
            "mountpoint": self.mountpoint,
            "device": self.device,
            "fstype": self.fstype,
            "read_only": self.read_only,
            "total_bytes": self.total_bytes,
            "free_bytes": self.free_bytes,
            "free_percent": round(pct, 2) if pct is not None else None,
            "io_errors": self.io_errors,
            "on_root_fs": self.on_root_fs,
            "io": {
                "reads": self.stat.reads,
                "writes": self.stat.writes,
                "sectors_read": self.stat.sectors_read,
                "sectors_written": self.stat.sectors_written,
                "in_flight": self.stat.in_flight,
                "io_ms": self.stat.io_ms,
            }
            if self.stat
            else None,
        }


class DiskProbe(ABC):
    @abstractmethod
    def probe(self, data_dir: Path, expected_mount: str | None) -> DiskReading:
        """Look at the data disk; never raises for a missing or broken disk."""


def mount_of(path: str, mounts: list[Mount]) -> Mount | None:
    """The mount that holds ``path`` (the longest mount point prefix; the last one wins)."""
    best: Mount | None = None
    for m in mounts:
        mp = m.mountpoint.rstrip("/") or "/"
        inside = path == mp or path.startswith(mp + "/") or mp == "/"
        if inside and (best is None or len(mp) >= len(best.mountpoint.rstrip("/") or "/")):
            best = m
    return best


class LinuxDiskProbe(DiskProbe):
    def __init__(self, root: Path | str = "/") -> None:
        self.root = Path(root)

    def mounts(self) -> list[Mount]:
        for rel in ("proc/self/mounts", "proc/mounts"):
            try:
                return parse_mounts(read_text(self.root / rel, 1 << 20))
            except FileNotFoundError:
                continue
        return []

    def disk_of(self, device: str) -> str | None:
        """``/dev/sda1`` -> ``sda``, ``/dev/nvme0n1p2`` -> ``nvme0n1`` (via sysfs)."""
        if not device.startswith("/dev/"):
            return None
        name = os.path.basename(device)
        node = self.root / "sys/class/block" / name
        if not node.exists():
            return None
        if (node / "partition").exists():
            return node.resolve().parent.name
        return name

    def device_gone(self, mount: Mount) -> bool:
        """The disk under a (non-root) mount was removed: no device node, no sysfs entry.

        The kernel keeps a file system mounted after its USB disk is pulled, and reads may
        still come from the page cache, so the mount alone does not show it.
        """
        blocks = self.root / "sys/class/block"
        if mount.mountpoint == "/" or not mount.device.startswith("/dev/") or not blocks.is_dir():
            return False
        node = self.root / mount.device.lstrip("/")
        return not node.exists() and not (blocks / os.path.basename(mount.device)).exists()

    def io_errors(self, disk: str) -> int | None:
        try:
            return parse_ioerr_cnt(read_text(self.root / "sys/block" / disk / "device/ioerr_cnt"))
        except (OSError, SensorError):
            return None

    def block_stat(self, disk: str) -> DiskStat | None:
        """The disk's I/O counters from sysfs, else from ``/proc/diskstats``."""
        try:
            return parse_block_stat(disk, read_text(self.root / "sys/block" / disk / "stat"))
        except (OSError, SensorError):
            pass
        try:
            return parse_diskstats(read_text(self.root / "proc/diskstats", 1 << 20)).get(disk)
        except OSError:
            return None

    def probe(self, data_dir: Path, expected_mount: str | None) -> DiskReading:
        path = os.path.abspath(data_dir)
        mounts = self.mounts()
        if expected_mount and not any(m.mountpoint == expected_mount for m in mounts):
            return DiskReading(path, False, f"nothing is mounted on {expected_mount}")
        mount = mount_of(path, mounts)
        try:
            st = os.statvfs(path)
        except FileNotFoundError:
            return DiskReading(path, False, f"{path} does not exist")
        except OSError as exc:
            return DiskReading(path, False, f"{path}: {exc.strerror}")
        reading = DiskReading(
            path,
            True,
            read_only=bool(st.f_flag & os.ST_RDONLY) or bool(mount and mount.read_only),
            total_bytes=st.f_blocks * st.f_frsize,
            free_bytes=st.f_bavail * st.f_frsize,
        )
        if mount is not None and self.device_gone(mount):
            return DiskReading(
                path,
                False,
                f"{mount.device} is gone (unplugged?) while {mount.mountpoint} is still mounted",
            )
        if mount is not None:
            disk = self.disk_of(mount.device)
            reading = replace(
                reading,
                mountpoint=mount.mountpoint,
                device=f"/dev/{disk}" if disk else mount.device,
                fstype=mount.fstype,
                io_errors=self.io_errors(disk) if disk else None,
                stat=self.block_stat(disk) if disk else None,
                on_root_fs=mount.mountpoint == "/",
            )
        return reading


class FakeDiskProbe(DiskProbe):
    """Returns ``reading`` (set by the test) and records each probe."""

    def __init__(self, reading: DiskReading | None = None) -> None:
        self.reading = reading or DiskReading(
            "/data", True, mountpoint="/data", device="/dev/sda",
            total_bytes=1 << 40, free_bytes=1 << 39, io_errors=0,
        )  # fmt: skip
        self.probes = 0

    def probe(self, data_dir: Path, expected_mount: str | None) -> DiskReading:
        self.probes += 1
        return self.reading


@dataclass(frozen=True, slots=True)
class DiskChange:
    old: str
    new: str
    reason: str
    restriction: Restriction | None


_RESTRICTIONS: dict[str, Restriction | None] = {
    "ok": None,
    "low_space": Restriction(refuse_uploads=True),
    "read_only": Restriction(pause_background=True, refuse_uploads=True),
    "missing": Restriction(pause_background=True, refuse_uploads=True, refuse_audits=True),
}


class DiskPolicy:
    """Sans-I/O: disk readings in, state changes (with reasons and limits) out."""

    def __init__(self, low_space_percent: float = 5.0) -> None:
        self.low_space_percent = low_space_percent
        self.state = "ok"
        self.io_errors: int | None = None
        self.new_io_errors = 0
        self.last: DiskReading | None = None

    def classify(self, r: DiskReading) -> tuple[str, str]:
        if not r.present:
            return "missing", f"data disk missing: {r.problem}"
        if r.read_only:
            where = r.mountpoint or r.data_dir
            return "read_only", f"data disk {r.device or where} is mounted read-only at {where}"
        pct = r.free_percent
        if pct is not None and pct < self.low_space_percent:
            return "low_space", (
                f"data disk has {pct:.1f} % free, below {self.low_space_percent:g} %"
            )
        return "ok", "data disk is back to normal"

    def update(self, r: DiskReading) -> DiskChange | None:
        self.last = r
        self.new_io_errors = 0
        if r.io_errors is not None:
            if self.io_errors is not None and r.io_errors > self.io_errors:
                self.new_io_errors = r.io_errors - self.io_errors
            self.io_errors = r.io_errors
        state, reason = self.classify(r)
        if state == self.state:
            return None
        old, self.state = self.state, state
        return DiskChange(old, state, reason, _RESTRICTIONS[state])
