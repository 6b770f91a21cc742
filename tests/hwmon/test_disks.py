"""The data disk: mounts, read-only, space and I/O errors; loss and return on a real tmpfs."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from node.hwmon.disks import (
    DiskPolicy,
    DiskReading,
    FakeDiskProbe,
    LinuxDiskProbe,
    mount_of,
    set_idle_io_priority,
)
from node.hwmon.parse import parse_mounts
from node.hwmon.sensors import FakeSensors
from node.hwmon.service import HwmonService
from node.limits import Restriction
from tests.hwmon.conftest import DISKSTATS, make_ctx, write
from tests.support import require_binary, require_root


def usb_disk_tree(
    root: Path, data: Path, *, options: str = "rw,noatime", errors: str = "0x0"
) -> None:
    write(
        root, "proc/self/mounts", f"/dev/root / ext4 rw 0 0\n/dev/sda1 {data} ext4 {options} 0 0\n"
    )
    part = root / "sys/devices/platform/scb/usb2/2-1/host0/block/sda/sda1"
    write(root, str((part / "partition").relative_to(root)), "1\n")
    (root / "sys/class/block").mkdir(parents=True)
    (root / "sys/class/block/sda1").symlink_to(part)
    (root / "sys/class/block/sda").symlink_to(part.parent)
    write(root, "sys/block/sda/device/ioerr_cnt", errors + "\n")
    write(root, "sys/block/sda/stat", "1203 12 93254 3321 77 51 1024 412 0 2904 3733 0 0 0 0\n")


def test_probe_finds_device_and_io_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    usb_disk_tree(tmp_path / "root", data, errors="0x3")
    r = LinuxDiskProbe(tmp_path / "root").probe(data, None)
    assert r.present and r.mountpoint == str(data) and r.device == "/dev/sda"
    assert r.io_errors == 3 and not r.read_only and not r.on_root_fs
    assert r.total_bytes and r.free_bytes is not None
    assert r.stat is not None and (r.stat.reads, r.stat.sectors_written) == (1203, 1024)
    assert r.to_json()["io"]["io_ms"] == 2904


def test_io_counters_fall_back_to_proc_diskstats(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    root = tmp_path / "root"
    usb_disk_tree(root, data)
    (root / "sys/block/sda/stat").unlink()
    write(root, "proc/diskstats", DISKSTATS)
    stat = LinuxDiskProbe(root).probe(data, None).stat
    assert stat is not None and (stat.reads, stat.io_ms) == (1203, 2904)
    (root / "proc/diskstats").write_text("nonsense\n")
    assert LinuxDiskProbe(root).probe(data, None).stat is None


def test_probe_read_only_from_mount_options(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    usb_disk_tree(tmp_path / "root", data, options="ro,relatime")
    assert LinuxDiskProbe(tmp_path / "root").probe(data, None).read_only


def test_probe_missing_mount_and_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    root = tmp_path / "root"
    write(root, "proc/self/mounts", "/dev/root / ext4 rw 0 0\n")
    r = LinuxDiskProbe(root).probe(data, "/mnt/usb")
    assert not r.present and r.problem == "nothing is mounted on /mnt/usb"
    r = LinuxDiskProbe(root).probe(data, None)
    assert not r.present and "does not exist" in r.problem


def test_probe_pulled_disk_whose_mount_lingers(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    root = tmp_path / "root"
    usb_disk_tree(root, data)
    assert LinuxDiskProbe(root).probe(data, str(data)).present
    # The disk is pulled: its sysfs entries go, the kernel keeps the file system mounted.
    (root / "sys/class/block/sda1").unlink()
    (root / "sys/class/block/sda").unlink()
    r = LinuxDiskProbe(root).probe(data, str(data))
    assert not r.present
    assert r.problem == f"/dev/sda1 is gone (unplugged?) while {data} is still mounted"
    write(root, "dev/sda1", "")  # a device node of that name: it is back
    assert LinuxDiskProbe(root).probe(data, str(data)).present


def test_mount_of_picks_longest_prefix() -> None:
    mounts = parse_mounts("a / ext4 rw 0 0\nb /mnt ext4 rw 0 0\nc /mnt/usb ext4 rw 0 0\n")
    assert mount_of("/mnt/usb/data", mounts).device == "c"  # type: ignore[union-attr]
    assert mount_of("/mnt/usbx", mounts).device == "b"  # type: ignore[union-attr]
    assert mount_of("/var", mounts).device == "a"  # type: ignore[union-attr]


def reading(**kw: object) -> DiskReading:
    base: dict[str, object] = dict(
        data_dir="/d", present=True, mountpoint="/d", device="/dev/sda",
        total_bytes=1000, free_bytes=500, io_errors=0,
    )  # fmt: skip
    return DiskReading(**{**base, **kw})  # type: ignore[arg-type]


def test_policy_states_and_restrictions() -> None:
    p = DiskPolicy(low_space_percent=5)
    assert p.update(reading()) is None
    low = p.update(reading(free_bytes=40))
    assert low is not None and low.new == "low_space"
    assert low.restriction == Restriction(refuse_uploads=True)
    assert "4.0 % free, below 5 %" in low.reason
    ro = p.update(reading(read_only=True))
    assert ro is not None and ro.restriction == Restriction(
        pause_background=True, refuse_uploads=True
    )
    gone = p.update(reading(present=False, problem="nothing is mounted on /d"))
    assert gone is not None and gone.new == "missing"
    assert gone.restriction is not None and gone.restriction.refuse_audits
    back = p.update(reading())
    assert back is not None and back.old == "missing" and back.restriction is None


def test_policy_counts_new_io_errors() -> None:
    p = DiskPolicy()
    p.update(reading(io_errors=2))
    assert p.new_io_errors == 0  # the first reading is the baseline
    p.update(reading(io_errors=7))
    assert p.new_io_errors == 5
    p.update(reading(io_errors=None))
    assert p.new_io_errors == 0 and p.io_errors == 7


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    require_root("mounting a tmpfs")
    mount = require_binary("mount", "mount")
    umount = require_binary("umount", "mount")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        for _ in range(5):  # the test may have stacked mounts, or left none
            if not os.path.ismount(mnt):
                break
            subprocess.run([umount, "-l", str(mnt)], check=False)


async def test_disk_loss_read_only_and_return_on_a_real_tmpfs(tmpfs: Path, tmp_path: Path) -> None:
    mount = require_binary("mount", "mount")
    umount = require_binary("umount", "mount")
    data = tmpfs / "data"
    data.mkdir()
    ctx = make_ctx(data, tmp_path / "state", low_space_percent=20.0, leds=[])
    svc = HwmonService(ctx, sensors=FakeSensors())
    await svc.start()
    assert svc.expected_mount == str(tmpfs)
    await svc.poll()
    assert svc.disk_policy.state == "ok" and svc.disk is not None and svc.disk.fstype == "tmpfs"

    subprocess.run([umount, str(tmpfs)], check=True)
    await svc.poll()
    assert svc.disk_policy.state == "missing"
    assert ctx.limits.refuse_audits and ctx.limits.why("refuse_uploads") == ["data_disk"]
    assert f"nothing is mounted on {tmpfs}" in ctx.events.recent(1)[0].message
    assert any(f.check == "data-disk" and f.level == "fail" for f in svc.findings())

    subprocess.run([mount, "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(tmpfs)], check=True)
    data.mkdir()
    await svc.poll()
    assert svc.disk_policy.state == "ok"  # recovered without a restart
    assert ctx.limits.to_json()["reasons"] == []
    assert ctx.events.recent(1)[0].message.startswith("data disk is back to normal")

    subprocess.run([mount, "-o", "remount,ro", str(tmpfs)], check=True)
    await svc.poll()
    assert svc.disk_policy.state == "read_only" and ctx.limits.pause_background
    assert not ctx.limits.refuse_audits  # a read-only disk can still prove what it holds

    subprocess.run([mount, "-o", "remount,rw", str(tmpfs)], check=True)
    (data / "filler").write_bytes(b"\0" * (3700 * 1024))
    await svc.poll()
    assert svc.disk_policy.state == "low_space"
    assert ctx.limits.refuse_uploads and not ctx.limits.pause_background
    (data / "filler").unlink()
    await svc.poll()
    assert svc.disk_policy.state == "ok"
    states = [e.data.get("new") for e in reversed(ctx.events.recent(50)) if "new" in e.data]
    assert states == ["missing", "ok", "read_only", "low_space", "ok"]


class BlockingProbe(FakeDiskProbe):
    """A disk whose statvfs hangs until released (a USB disk that stopped answering)."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()

    def probe(self, data_dir: Path, expected_mount: str | None) -> DiskReading:
        self.release.wait(10)
        return super().probe(data_dir, expected_mount)


async def test_a_hung_disk_is_missing_and_never_stalls_the_loop(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "data", tmp_path / "state", leds=[], data_mount="/mnt/usb")
    probe = BlockingProbe()
    svc = HwmonService(ctx, sensors=FakeSensors(), disk_probe=probe)
    svc.disk_probe_timeout = 0.2
    await svc.poll()
    await svc.poll()  # the first probe is still stuck: no second thread is started
    assert svc.disk_policy.state == "missing" and probe.probes == 0
    assert "does not answer (blocked for over 0.2 s)" in ctx.events.recent(1)[0].message
    probe.release.set()
    for _ in range(50):
        await svc.poll()
        if svc.disk_policy.state == "ok":
            break
    assert svc.disk_policy.state == "ok" and probe.probes <= 2


def test_background_threads_can_take_idle_io_priority() -> None:
    result: list[object] = []

    def scan() -> None:
        result.append(set_idle_io_priority())
        result.append(psutil.Process(threading.get_native_id()).ionice().ioclass)

    t = threading.Thread(target=scan)
    t.start()
    t.join()
    assert result == [True, psutil.IOPRIO_CLASS_IDLE]
    assert psutil.Process().ionice().ioclass != psutil.IOPRIO_CLASS_IDLE  # only that thread
