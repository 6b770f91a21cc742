"""LinuxSensors against fake Pi 4 / Pi 5 trees, garbage and missing files; FakeSensors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.hwmon.sensors import THROTTLED_FILE, FakeSensors, LinuxSensors, pick_soc, read_all
from tests.hwmon.conftest import FakeClock, build_pi, write


def test_pi_tree_readings(pi_root: Path) -> None:
    r = read_all(LinuxSensors(pi_root))
    assert r.findings == []
    assert r.soc_temp_c == 48.15
    assert r.temps["cpu-thermal"] == 48.15
    assert r.throttled is not None and not any(r.throttled.now.values())
    assert r.under_voltage_alarm is False
    assert r.load == (0.08, 0.12, 0.10)
    assert r.memory is not None and r.memory["MemAvailable"] == 3398920 * 1024
    assert r.clock is not None and r.clock.synced is True
    assert r.fan_rpm == (2987 if pi_root.name == "pi5" else None)


def test_throttled_now_and_since_boot(tmp_path: Path) -> None:
    root = build_pi(tmp_path, 4, throttled="50005")
    r = read_all(LinuxSensors(root))
    assert r.throttled is not None
    assert r.throttled.now["under_voltage"] and r.throttled.since_boot["under_voltage"]
    assert r.under_voltage_now
    write(root, "sys/class/hwmon/hwmon1/in0_lcrit_alarm", "1\n")
    write(root, "sys/devices/platform/soc/soc:firmware/get_throttled", "0\n")
    assert read_all(LinuxSensors(root)).under_voltage_now  # the hwmon alarm alone counts


def test_garbage_in_every_file_is_a_finding_not_a_crash(tmp_path: Path) -> None:
    root = build_pi(tmp_path, 5)
    for rel in (
        "sys/class/thermal/thermal_zone0/temp",
        "sys/class/hwmon/hwmon0/temp1_input",
        "sys/class/hwmon/hwmon1/temp1_input",
        "sys/devices/platform/soc/soc:firmware/get_throttled",
        "proc/loadavg",
        "proc/meminfo",
    ):
        (root / rel).write_bytes(b"\xff\xfegarbage\x00")
    r = read_all(LinuxSensors(root))
    assert r.soc_temp_c is None and r.throttled is None and r.load is None
    checks = {f.check for f in r.findings}
    assert {"temperature", "throttling", "load", "memory"} <= checks
    assert all(f.level == "warn" for f in r.findings)
    msg = next(f.message for f in r.findings if f.check == "throttling")
    assert "get_throttled" in msg and "not a throttled value" in msg


def test_missing_files(tmp_path: Path) -> None:
    r = read_all(LinuxSensors(tmp_path))  # an empty root: not a Pi, no sensors
    assert r.soc_temp_c is None and r.temps == {}
    assert r.throttled is None  # not a Pi: no flags, and no vcgencmd outside the host root
    assert r.clock is not None and r.clock.synced is None
    assert {f.check for f in r.findings} == {"load", "memory"}
    assert any("proc/loadavg" in f.message for f in r.findings)


def test_one_bad_zone_among_good_ones(tmp_path: Path) -> None:
    root = build_pi(tmp_path, 4)
    write(root, "sys/class/thermal/thermal_zone1/type", "gpu-thermal\n")
    write(root, "sys/class/thermal/thermal_zone1/temp", "-999999999\n")
    r = read_all(LinuxSensors(root))
    assert r.soc_temp_c == 48.15
    assert [f.check for f in r.findings] == ["temperature"]
    assert "thermal_zone1" in r.findings[0].message


def test_clock_not_synchronised(tmp_path: Path) -> None:
    root = build_pi(tmp_path, 4)
    (root / "run/systemd/timesync/synchronized").unlink()
    assert LinuxSensors(root).clock().synced is False


def test_pick_soc_prefers_cpu_zone() -> None:
    assert pick_soc({"acpitz": 60.0, "x86_pkg_temp": 41.0}) == 41.0
    assert pick_soc({"a": 30.0, "b": 33.0}) == 33.0
    assert pick_soc({}) is None


def test_fake_sensors_record_reads() -> None:
    clock = FakeClock(5.0)
    fake = FakeSensors(clock)
    read_all(fake)
    clock.advance(2)
    fake.error = OSError(5, "Input/output error", "/sys/fake")
    r = read_all(fake)
    assert {t for t, _ in fake.reads} == {5.0, 7.0}
    assert r.temps == {} and any("Input/output error" in f.message for f in r.findings)


SENSOR_FILES = (
    "sys/class/thermal/thermal_zone0/temp",
    "sys/class/thermal/thermal_zone0/type",
    "sys/class/hwmon/hwmon0/temp1_input",
    "sys/class/hwmon/hwmon2/in0_lcrit_alarm",
    "sys/class/hwmon/hwmon3/fan1_input",
    "sys/devices/platform/soc/soc:firmware/get_throttled",
    "proc/loadavg",
    "proc/meminfo",
)


@pytest.fixture(scope="module")
def shared_pi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_pi(tmp_path_factory.mktemp("fuzz"), 5)


@settings(max_examples=40, deadline=None)
@given(files=st.dictionaries(st.sampled_from(SENSOR_FILES), st.binary(max_size=200), min_size=1))
def test_any_bytes_in_any_sensor_file_give_readings_or_findings(
    shared_pi: Path, files: dict[str, bytes]
) -> None:
    saved = {rel: (shared_pi / rel).read_bytes() for rel in files}
    try:
        for rel, data in files.items():
            (shared_pi / rel).write_bytes(data)
        r = read_all(LinuxSensors(shared_pi))
    finally:
        for rel, data in saved.items():
            (shared_pi / rel).write_bytes(data)
    json.dumps(r.to_json())
    assert r.soc_temp_c is None or -60 <= r.soc_temp_c <= 200
    assert all(f.level == "warn" and f.message for f in r.findings)


@pytest.mark.skipif(
    Path("/", THROTTLED_FILE).exists(), reason="this machine has the firmware's sysfs file"
)
@pytest.mark.parametrize(
    ("script", "expect"),
    [
        ("echo throttled=0x50000", "since boot"),
        ("echo 'VCHI initialization failed' >&2; exit 1", "vcgencmd get_throttled failed"),
        ("exec sleep 30", "did not answer within 0.3 s"),
        ("echo throttled=banana", "not a throttled value"),
    ],
)
def test_vcgencmd_on_the_host(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str, expect: str
) -> None:
    tool = tmp_path / "vcgencmd"
    tool.write_text(f"#!/bin/sh\n{script}\n")
    tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    r = read_all(LinuxSensors("/", vcgencmd_timeout=0.3))
    if expect == "since boot":
        assert r.throttled is not None and r.throttled.since_boot["under_voltage"]
        assert not r.throttled.now["under_voltage"]
    else:
        assert r.throttled is None
        assert any(f.check == "throttling" and expect in f.message for f in r.findings)
