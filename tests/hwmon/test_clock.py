"""The clock check: a box whose clock is far off and unsynchronised refuses to mine and says why
until NTP sets the time; a box that is merely offline with a sane clock keeps mining."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from node.hwmon.clock import RELEASE_FLOOR, SAVED_CLOCK, ClockPolicy, clock_floor, far_off
from node.hwmon.disks import FakeDiskProbe
from node.hwmon.doctor import run_checks
from node.hwmon.sensors import ClockSync, LinuxSensors, read_all
from node.hwmon.service import HwmonService
from tests.hwmon.conftest import build_pi, make_ctx, write

# What a Pi's clock reads at power-on without RTC and without a saved time: systemd's build time.
SYSTEMD_EPOCH = datetime(2026, 4, 27, 19, 48, tzinfo=UTC).timestamp()


def unsynced_pi(root: Path) -> Path:
    """A Pi 4 whose systemd-timesyncd runs but has not reached an NTP server."""
    build_pi(root, 4)
    (root / "run/systemd/timesync/synchronized").unlink()
    return root


class Wall:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_sync_state_from_a_run_tree(tmp_path: Path) -> None:
    root = unsynced_pi(tmp_path / "root")
    sensors = LinuxSensors(root)
    assert sensors.clock() == ClockSync(False, "systemd-timesyncd")
    write(root, "run/systemd/timesync/synchronized", "")
    assert sensors.clock() == ClockSync(True, "systemd-timesyncd")


def test_floor_is_the_release_or_the_saved_clock(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert clock_floor(root) == RELEASE_FLOOR
    saved = write(root, SAVED_CLOCK, "")
    os.utime(saved, (RELEASE_FLOOR + 86400, RELEASE_FLOOR + 86400))
    assert clock_floor(root) == RELEASE_FLOOR + 86400
    os.utime(saved, (RELEASE_FLOOR - 86400, RELEASE_FLOOR - 86400))
    assert clock_floor(root) == RELEASE_FLOOR  # an older saved time lowers nothing


@given(
    synced=st.sampled_from([True, False, None]),
    now=st.floats(min_value=0, max_value=4e9),
    floor=st.floats(min_value=0, max_value=4e9),
)
def test_far_off_only_when_unsynchronised_and_before_the_floor(
    synced: bool | None, now: float, floor: float
) -> None:
    why = far_off(ClockSync(synced, "adjtimex"), now, floor)
    assert (why is not None) == (not synced and now < floor)
    if why is not None:
        assert "not synchronised (adjtimex)" in why


def test_policy_reports_changes_once() -> None:
    policy = ClockPolicy()
    off = ClockSync(False, "systemd-timesyncd")
    first = policy.update(off, SYSTEMD_EPOCH, RELEASE_FLOOR)
    assert first is not None and first.far_off and first.restriction is not None
    assert first.restriction.refuse_uploads and first.restriction.refuse_audits
    assert "2026-04-27 19:48 UTC, before 2026-11-01 00:00 UTC" in first.reason
    assert policy.update(off, SYSTEMD_EPOCH + 5, RELEASE_FLOOR) is None
    back = policy.update(ClockSync(True, "systemd-timesyncd"), time.time(), RELEASE_FLOOR)
    assert back is not None and not back.far_off and back.restriction is None
    assert policy.update(ClockSync(True, "systemd-timesyncd"), time.time(), RELEASE_FLOOR) is None


async def test_far_off_clock_stops_mining_until_synchronised(tmp_path: Path) -> None:
    root = unsynced_pi(tmp_path / "root")
    ctx = make_ctx(tmp_path / "data", tmp_path / "state", sysfs_root=str(root), leds=[])
    wall = Wall(SYSTEMD_EPOCH)
    svc = HwmonService(ctx, disk_probe=FakeDiskProbe(), wall=wall)
    await svc.start()  # judged before the first poll, so no upload slips in
    assert ctx.limits.refuse_uploads and ctx.limits.refuse_audits and ctx.limits.pause_background
    assert ctx.limits.why("refuse_uploads") == ["clock"]
    assert svc.status()["clock"] == "far_off"
    (event,) = [e for e in ctx.events.recent() if e.source == "hwmon"]
    assert event.level == "error" and "until the time is synchronised" in event.message
    (finding,) = [f for f in svc.findings() if f.check == "clock"]
    assert finding.level == "fail" and "NTP" in finding.action
    assert svc.hardware()["clock"]["state"] == "far_off"

    svc.apply(read_all(svc.sensors), FakeDiskProbe().reading, 0.0)  # still unsynced: no news
    assert len(ctx.events.recent()) == 1 and ctx.limits.refuse_uploads

    write(root, "run/systemd/timesync/synchronized", "")  # timesyncd reached NTP ...
    wall.t = RELEASE_FLOOR + 30 * 86400  # ... and stepped the clock
    svc.apply(read_all(svc.sensors), FakeDiskProbe().reading, 5.0)
    assert ctx.limits.to_json()["reasons"] == []
    assert svc.status()["clock"] == "ok"
    assert ctx.events.recent()[0].message.endswith("all work resumes")
    assert not [f for f in svc.findings() if f.check == "clock"]


async def test_offline_box_with_a_sane_clock_keeps_mining(tmp_path: Path) -> None:
    root = unsynced_pi(tmp_path / "root")
    ctx = make_ctx(tmp_path / "data", tmp_path / "state", sysfs_root=str(root), leds=[])
    svc = HwmonService(ctx, disk_probe=FakeDiskProbe(), wall=Wall(RELEASE_FLOOR + 86400))
    await svc.start()
    svc.apply(read_all(svc.sensors), FakeDiskProbe().reading, 0.0)
    assert not (ctx.limits.refuse_uploads or ctx.limits.refuse_audits)
    assert svc.status()["clock"] == "ok"
    (finding,) = [f for f in svc.findings() if f.check == "clock"]
    assert finding.level == "warn"  # unsynchronised is worth a word, not a stop


def test_doctor_names_a_clock_behind_the_saved_time(tmp_path: Path, data_dir: Path) -> None:
    root = unsynced_pi(tmp_path / "root")
    later = time.time() + 365 * 86400  # timesyncd saved a time after the one the clock shows
    os.utime(write(root, SAVED_CLOCK, ""), (later, later))
    (clock,) = [f for f in run_checks(data_dir, root) if f.check == "clock"]
    assert clock.level == "fail" and "refuses to mine" in clock.message
    os.utime(root / SAVED_CLOCK, (RELEASE_FLOOR, RELEASE_FLOOR))
    (clock,) = [f for f in run_checks(data_dir, root) if f.check == "clock"]
    assert clock.level == "warn" and "not synchronised" in clock.message
