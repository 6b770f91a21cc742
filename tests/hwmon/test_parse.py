"""The parsers of sensor files and tool output: exact values, and never a crash on garbage."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.hwmon.errors import SensorError
from node.hwmon.parse import (
    parse_block_stat,
    parse_default_route,
    parse_diskstats,
    parse_ioerr_cnt,
    parse_led_trigger,
    parse_loadavg,
    parse_meminfo,
    parse_millidegrees,
    parse_mounts,
    parse_smartctl,
    parse_throttled,
)
from tests.hwmon.conftest import DISKSTATS, MEMINFO, ROUTE

# A real `smartctl --json -H -A -i /dev/sda` of a healthy SATA SSD behind a UAS bridge (trimmed).
SMART_OK = {
    "json_format_version": [1, 0],
    "smartctl": {"version": [7, 3], "exit_status": 0},
    "device": {"name": "/dev/sda", "type": "sat", "protocol": "ATA"},
    "model_name": "Samsung SSD 870 EVO 1TB",
    "smart_status": {"passed": True},
    "ata_smart_attributes": {
        "revision": 1,
        "table": [
            {"id": 5, "name": "Reallocated_Sector_Ct", "raw": {"value": 0, "string": "0"}},
            {"id": 9, "name": "Power_On_Hours", "raw": {"value": 8123, "string": "8123"}},
            {"id": 197, "name": "Current_Pending_Sector", "raw": {"value": 2, "string": "2"}},
        ],
    },
    "temperature": {"current": 31},
}


def test_millidegrees() -> None:
    assert parse_millidegrees("48150\n") == 48.15
    assert parse_millidegrees("-5000") == -5.0
    for bad in ("", "hot", "48.1", "999999999", "-99000", "1" * 40):
        with pytest.raises(SensorError):
            parse_millidegrees(bad)


@pytest.mark.parametrize(
    ("text", "now", "since"),
    [
        ("throttled=0x0\n", set(), set()),
        ("throttled=0x50005\n", {"under_voltage", "throttled"}, {"under_voltage", "throttled"}),
        ("80008", {"soft_temp_limit"}, {"soft_temp_limit"}),
        ("0x20000", set(), {"frequency_capped"}),
        ("e000f", {"under_voltage", "frequency_capped", "throttled", "soft_temp_limit"},
         {"frequency_capped", "throttled", "soft_temp_limit"}),
    ],
)  # fmt: skip
def test_throttled_flags(text: str, now: set[str], since: set[str]) -> None:
    t = parse_throttled(text)
    assert {k for k, v in t.now.items() if v} == now
    assert {k for k, v in t.since_boot.items() if v} == since


@pytest.mark.parametrize("bad", ["", "throttled=", "0x", "zz", "0x1234567890", "throttled=0xG"])
def test_throttled_garbage(bad: str) -> None:
    with pytest.raises(SensorError, match="not a throttled value"):
        parse_throttled(bad)


def test_diskstats_and_block_stat() -> None:
    stats = parse_diskstats(DISKSTATS + "garbage line\n 8 2 sdb x y z\n")
    assert set(stats) == {"mmcblk0", "mmcblk0p1", "sda", "sda1"}
    assert stats["sda"].reads == 1203 and stats["sda"].sectors_written == 1024
    assert stats["sda"].io_ms == 2904
    one = parse_block_stat("sda", "1203 12 93254 3321 77 51 1024 412 0 2904 3733 0 0 0 0")
    assert one == stats["sda"]
    with pytest.raises(SensorError):
        parse_block_stat("sda", "1 2 3")


def test_ioerr_cnt() -> None:
    assert parse_ioerr_cnt("0x1f\n") == 31
    with pytest.raises(SensorError):
        parse_ioerr_cnt("lots")


def test_mounts_unescape_and_read_only() -> None:
    mounts = parse_mounts(
        "/dev/root / ext4 rw,noatime 0 0\n"
        "/dev/sda1 /mnt/my\\040disk ext4 ro,relatime 0 0\n"
        "short line\n"
    )
    assert [m.mountpoint for m in mounts] == ["/", "/mnt/my disk"]
    assert mounts[1].read_only and not mounts[0].read_only


def test_loadavg_meminfo_route_trigger() -> None:
    assert parse_loadavg("0.08 0.12 0.10 1/213 4242") == (0.08, 0.12, 0.10)
    with pytest.raises(SensorError):
        parse_loadavg("nan 1 2")
    mem = parse_meminfo(MEMINFO)
    assert mem["MemTotal"] == 3884356 * 1024
    with pytest.raises(SensorError):
        parse_meminfo("MemFree: 1 kB\n")
    assert parse_default_route(ROUTE)
    assert not parse_default_route(ROUTE.replace("0003", "0002"))
    assert parse_led_trigger("none [mmc0] timer\n") == ("mmc0", ("none", "mmc0", "timer"))
    with pytest.raises(SensorError):
        parse_led_trigger("none mmc0 timer")


def test_smartctl_healthy_with_pending_sectors() -> None:
    r = parse_smartctl("/dev/sda", json.dumps(SMART_OK))
    assert r.passed is True and r.temperature_c == 31.0
    assert r.reallocated_sectors == 0 and r.pending_sectors == 2
    assert r.model == "Samsung SSD 870 EVO 1TB"


def test_smartctl_usb_bridge_without_smart() -> None:
    doc = {
        "smartctl": {
            "exit_status": 1,
            "messages": [
                {"string": "/dev/sda: Unknown USB bridge [0x152d:0x0578]", "severity": "error"}
            ],
        }
    }  # fmt: skip
    r = parse_smartctl("/dev/sda", json.dumps(doc))
    assert r.passed is None and r.exit_status == 1
    assert "Unknown USB bridge" in r.messages[0]


@pytest.mark.parametrize("bad", ["", "Segmentation fault", "[1,2]", '{"a": 1}', "{" * 100000])
def test_smartctl_nonsense(bad: str) -> None:
    with pytest.raises(SensorError):
        parse_smartctl("/dev/sda", bad)


# --- properties: whatever the input, a value or SensorError, nothing else -------------------

text = st.text(max_size=300)


@given(text)
def test_fuzz_millidegrees(s: str) -> None:
    try:
        value = parse_millidegrees(s)
    except SensorError:
        return
    assert -60.0 <= value <= 200.0


@given(st.one_of(text, st.integers(0, 2**32 - 1).map(hex)))
def test_fuzz_throttled(s: str) -> None:
    try:
        t = parse_throttled(s)
    except SensorError:
        return
    assert 0 <= t.raw < 2**32
    assert set(t.now) == set(t.since_boot) == {
        "under_voltage", "frequency_capped", "throttled", "soft_temp_limit"
    }  # fmt: skip


@given(st.integers(0, 2**32 - 1))
def test_throttled_roundtrip(value: int) -> None:
    t = parse_throttled(f"throttled={value:#x}")
    assert t.raw == value
    assert t.now["under_voltage"] == bool(value & 1)
    assert t.since_boot["soft_temp_limit"] == bool(value & (1 << 19))


diskstat_line = st.lists(
    st.one_of(st.integers(0, 2**64).map(str), st.text(max_size=8)), min_size=0, max_size=20
).map(" ".join)


@given(st.lists(diskstat_line, max_size=20).map("\n".join))
def test_fuzz_diskstats(s: str) -> None:
    for name, stat in parse_diskstats(s).items():
        assert stat.name == name and stat.reads >= 0


@given(text)
def test_fuzz_other_proc_files(s: str) -> None:
    for fn in (parse_loadavg, parse_meminfo, parse_ioerr_cnt, parse_led_trigger):
        with contextlib.suppress(SensorError):
            fn(s)
    parse_mounts(s)
    parse_default_route(s)
    with contextlib.suppress(SensorError):
        parse_block_stat("sda", s)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(
        st.sampled_from(
            ["smartctl", "exit_status", "messages", "string", "smart_status", "passed",
             "temperature", "current", "ata_smart_attributes", "table", "id", "raw", "value",
             "nvme_smart_health_information_log", "media_errors", "model_name"]
        ),
        children,
        max_size=5,
    ),
    max_leaves=30,
)  # fmt: skip


@given(json_values)
def test_fuzz_smartctl_json(doc: object) -> None:
    try:
        r = parse_smartctl("/dev/sda", json.dumps(doc))
    except SensorError:
        return
    assert r.passed in (True, False, None)
    assert r.temperature_c is None or -60 <= r.temperature_c <= 200
    json.dumps(r.to_json())


@given(text)
def test_fuzz_smartctl_text(s: str) -> None:
    with contextlib.suppress(SensorError):
        parse_smartctl("/dev/sda", s)
