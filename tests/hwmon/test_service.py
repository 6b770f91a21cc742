"""The hwmon agent service: policies applied to limits and events, fan, LEDs, dashboard data."""

from __future__ import annotations

import asyncio
import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest

from node.hwmon.disks import FakeDiskProbe
from node.hwmon.errors import HwmonError
from node.hwmon.gpio import FakeGpio
from node.hwmon.leds import FakeLed
from node.hwmon.parse import Throttled
from node.hwmon.sensors import FakeSensors, read_all
from node.hwmon.service import HwmonService
from tests.hwmon.conftest import FakeClock, build_pi, make_ctx, write


def service(tmp_path: Path, clock: FakeClock, **hwmon: object) -> tuple[HwmonService, FakeSensors]:
    ctx = make_ctx(tmp_path / "data", tmp_path / "state", **{"leds": [], **hwmon})
    sensors = FakeSensors(clock)
    svc = HwmonService(
        ctx, sensors=sensors, disk_probe=FakeDiskProbe(), gpio=FakeGpio(clock),
        leds=[FakeLed("status", clock)], clock=clock,
    )  # fmt: skip
    return svc, sensors


def step(svc: HwmonService, sensors: FakeSensors, clock: FakeClock, temp: float) -> None:
    sensors.temps = {"cpu-thermal": temp}
    svc.apply(read_all(sensors), FakeDiskProbe().reading, clock())


async def test_thermal_series_drives_fan_limits_and_events(
    tmp_path: Path, clock: FakeClock
) -> None:
    svc, sensors = service(tmp_path, clock, fan_pin=18)
    await svc.start()
    ctx = svc.ctx
    assert svc.fan is not None
    caps = []
    for temp in (45.0, 55.0, 66.0, 76.0, 86.0, 78.0, 50.0, 50.0, 50.0, 50.0, 50.0):
        step(svc, sensors, clock, temp)
        caps.append((svc.policy.level.label, ctx.limits.bandwidth_cap_bps,
                     ctx.limits.refuse_uploads, ctx.limits.refuse_audits))  # fmt: skip
        clock.advance(10)
    assert caps == [
        ("normal", None, False, False),
        ("normal", None, False, False),
        ("warm", None, False, False),
        ("hot", 2_000_000, True, False),
        ("critical", 2_000_000, True, True),
        ("critical", 2_000_000, True, True),  # 78 < 85 - 5: cool-down starts
        ("critical", 2_000_000, True, True),  # 10 s
        ("critical", 2_000_000, True, True),  # 20 s
        ("normal", None, False, False),  # 30 s below 80 C: straight back to normal
        ("normal", None, False, False),
        ("normal", None, False, False),
    ]
    events = [e for e in reversed(ctx.events.recent(50)) if "new" in e.data]
    assert [(e.level, e.data["old"], e.data["new"]) for e in events] == [
        ("info", "normal", "warm"),
        ("warning", "warm", "hot"),
        ("error", "hot", "critical"),
        ("info", "critical", "normal"),
    ]
    assert "reached the hot threshold 75 C" in events[1].message
    assert "stayed below 80 C for 30 s" in events[3].message
    fan = svc.fan
    pwm = [v for _, kind, v in fan.gpio.history(18) if kind == "pwm"]  # type: ignore[attr-defined]
    assert pwm == [53.3, 100.0, 30.0]  # 55 C on the curve, full when warm, min once cool


async def test_under_voltage_pauses_background_work(tmp_path: Path, clock: FakeClock) -> None:
    svc, sensors = service(tmp_path, clock)
    sensors.throttle = Throttled.from_int(0x50005)
    step(svc, sensors, clock, 50.0)
    assert svc.ctx.limits.why("pause_background") == ["power"]
    assert any(f.check == "power" and f.level == "fail" for f in svc.findings())
    assert "under-voltage" in svc.ctx.events.recent(1)[0].message
    sensors.throttle = Throttled.from_int(0x50000)
    for i in range(3):  # good for 20 s, less than cool_down_s: still held
        clock.advance(10)
        step(svc, sensors, clock, 50.0)
        assert svc.ctx.limits.why("pause_background") == ["power"]
        sensors.throttle = Throttled.from_int(0x50005 if i == 1 else 0x50000)  # one more sag
    for _ in range(3):
        clock.advance(10)
        step(svc, sensors, clock, 50.0)
    assert svc.ctx.limits.to_json()["reasons"] == []
    power_events = [e.message for e in svc.ctx.events.recent() if "volt" in e.message]
    assert len(power_events) == 2  # one sag, one recovery: no flapping
    power = [f for f in svc.findings() if f.check == "power"]
    assert [(f.level, f.message) for f in power] == [("warn", "under-voltage happened since boot")]


async def test_identify_blinks_then_returns_to_the_box_state(
    tmp_path: Path, clock: FakeClock
) -> None:
    svc, sensors = service(tmp_path, clock)
    await svc.start()
    step(svc, sensors, clock, 45.0)
    led = svc.leds.leds[0]
    assert isinstance(led, FakeLed)
    assert svc.led_step(clock()) is None and svc.leds.sequencer.pattern == "healthy"
    await svc.identify(0.5)
    while (nxt := svc.led_step(clock())) is not None:
        clock.t = nxt
    assert svc.leds.sequencer.pattern == "healthy"
    t0 = led.states[0][0]
    assert [(round(t - t0, 3), on) for t, on in led.states] == [
        (0.0, True), (0.1, False), (0.2, True), (0.3, False), (0.4, True),
    ]  # fmt: skip
    with pytest.raises(HwmonError, match="positive number of seconds"):
        await svc.identify(float("nan"))


async def test_hardware_document_for_the_dashboard(tmp_path: Path, clock: FakeClock) -> None:
    svc, sensors = service(tmp_path, clock, fan_pin=18)
    await svc.start()
    sensors.throttle = Throttled.from_int(0x20000)
    step(svc, sensors, clock, 58.0)
    doc = svc.hardware()
    json.dumps(doc)
    assert doc["cpu_temp_c"] == 58.0 and doc["thermal_level"] == "normal"
    assert doc["throttled"]["now"]["frequency_capped"] is False
    assert doc["throttled"]["since_boot"]["frequency_capped"] is True
    assert doc["fan"]["present"] and doc["fan"]["duty"] == svc.policy.fan_duty
    assert doc["disks"][0]["state"] == "ok" and doc["disks"][0]["device"] == "/dev/sda"
    assert doc["leds"]["pattern"] == "healthy"
    assert all(set(f) >= {"level", "check", "message"} for f in doc["findings"])
    assert set(svc.status()) >= {"thermal_level", "disk", "led_pattern", "polls"}


@pytest.mark.skipif(importlib.util.find_spec("RPi") is not None, reason="RPi.GPIO installed")
async def test_missing_gpio_is_reported_once(tmp_path: Path) -> None:
    ctx = make_ctx(tmp_path / "data", tmp_path / "state", fan_pin=18, leds=[])
    svc = HwmonService(ctx, sensors=FakeSensors(), disk_probe=FakeDiskProbe())
    await svc.start()
    svc._close_devices()
    await svc.start()  # a restart after a crash opens the devices again
    gpio = [f for f in svc.findings() if f.check == "gpio"]
    assert len(gpio) == 1 and "rpi-lgpio" in gpio[0].message
    assert sum("GPIO" in e.message for e in ctx.events.recent()) == 1
    assert svc.fan is None and svc.hardware()["fan"] == {
        "configured": True, "present": False, "duty": None, "curve_duty": 0.0, "rpm": None,
    }  # fmt: skip


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in root.rglob("*")
        if p.is_file()
    }


async def test_run_loop_on_a_pi_tree_restores_led_triggers(tmp_path: Path) -> None:
    root = build_pi(tmp_path / "root", 5, temp_mc=77000)
    ctx = make_ctx(
        tmp_path / "data", tmp_path / "state",
        sysfs_root=str(root), leds=["ACT", "PWR", "LED9"], poll_interval_s=0.2,
    )  # fmt: skip
    svc = HwmonService(ctx, disk_probe=FakeDiskProbe())
    await svc.start()
    assert (root / "sys/class/leds/ACT/trigger").read_text() == "none"
    before = snapshot(root)
    task = asyncio.create_task(svc.run())
    for _ in range(200):
        if svc.polls >= 2:
            break
        await asyncio.sleep(0.05)
    assert svc.policy.level.label == "hot" and ctx.limits.bandwidth_cap_bps == 2_000_000
    changed = {k for k, v in snapshot(root).items() if before.get(k) != v}
    assert changed <= {"sys/class/leds/ACT/brightness", "sys/class/leds/PWR/brightness"}
    assert not (tmp_path / "data").exists()  # nothing written anywhere else
    write(root, "sys/class/thermal/thermal_zone0/temp", "garbage\n")
    write(root, "sys/class/hwmon/hwmon0/temp1_input", "garbage\n")
    polls = svc.polls
    for _ in range(200):
        if svc.polls > polls:
            break
        await asyncio.sleep(0.05)
    assert svc.policy.level.label == "hot"  # a broken sensor does not cool the box
    assert any("thermal_zone0" in f.message for f in svc.findings())
    assert svc.leds.sequencer.pattern == "overheating"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (root / "sys/class/leds/ACT/trigger").read_text() == "mmc0"
    assert (root / "sys/class/leds/PWR/trigger").read_text() == "default-on"
    assert [f.message for f in svc.findings() if f.check == "leds"] == [
        f"no board LED 'LED9' at {root}/sys/class/leds/LED9"
    ]


async def test_without_leds_the_led_loop_never_wakes(tmp_path: Path, clock: FakeClock) -> None:
    ctx = make_ctx(tmp_path / "data", tmp_path / "state", leds=[])
    svc = HwmonService(ctx, sensors=FakeSensors(clock), disk_probe=FakeDiskProbe(), clock=clock)
    await svc.start()
    write(tmp_path / "root", "proc/net/route", "Iface\tDestination\n")  # no default route
    svc.root = tmp_path / "root"
    svc.apply(read_all(svc.sensors), FakeDiskProbe().reading, clock())
    assert svc.hardware()["leds"]["pattern"] == "no_network"
    assert svc.led_step(clock()) is None
    await svc.identify(5)
    assert svc.led_step(clock()) is None and svc.status()["led_pattern"] == "identify"


async def test_io_error_events_are_batched(tmp_path: Path, clock: FakeClock) -> None:
    svc, sensors = service(tmp_path, clock)
    reading = FakeDiskProbe().reading
    for errors in (0, 2, 5, 9):
        svc.apply(read_all(sensors), replace(reading, io_errors=errors), clock())
        clock.advance(5)
    clock.advance(60)
    svc.apply(read_all(sensors), replace(reading, io_errors=10), clock())
    told = [e.message for e in reversed(svc.ctx.events.recent()) if "I/O errors" in e.message]
    assert told == ["2 new I/O errors on /dev/sda", "8 new I/O errors on /dev/sda"]
