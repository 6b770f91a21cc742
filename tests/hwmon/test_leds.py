"""LED patterns asserted by their timed states; sysfs LEDs taken over and given back; GPIO."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from node.hwmon.errors import DeviceMissing, HwmonError
from node.hwmon.gpio import FakeGpio, open_gpio
from node.hwmon.leds import (
    PATTERNS,
    FakeLed,
    GpioLed,
    LedDriver,
    LedSequencer,
    SysfsLed,
    choose_pattern,
)
from tests.hwmon.conftest import FakeClock, led


def drive(pattern: str, seconds: float, clock: FakeClock) -> list[tuple[float, bool]]:
    """Run a pattern as the service's LED loop does: sleep exactly until each next edge."""
    fake = FakeLed("status", clock)
    driver = LedDriver([fake], LedSequencer(pattern, clock()))
    end = clock() + seconds
    while True:
        nxt = driver.apply(clock())
        if nxt is None or nxt > end:
            break
        clock.t = nxt
    start = fake.states[0][0]
    return [(round(t - start, 3), on) for t, on in fake.states]


def test_booting_blinks_at_2hz(clock: FakeClock) -> None:
    assert drive("booting", 1.0, clock) == [
        (0.0, True), (0.25, False), (0.5, True), (0.75, False), (1.0, True),
    ]  # fmt: skip


def test_disk_problem_is_three_flashes_then_a_pause(clock: FakeClock) -> None:
    states = drive("disk_problem", 3.6, clock)
    assert states == [
        (0.0, True), (0.2, False), (0.4, True), (0.6, False), (0.8, True), (1.0, False),
        (2.4, True), (2.6, False), (2.8, True), (3.0, False), (3.2, True), (3.4, False),
    ]  # fmt: skip


def test_healthy_is_steady_and_costs_no_wakeups(clock: FakeClock) -> None:
    fake = FakeLed("status", clock)
    driver = LedDriver([fake], LedSequencer("healthy", clock()))
    assert driver.apply(clock()) is None
    clock.advance(3600)
    assert driver.apply(clock()) is None
    assert fake.states == [(1000.0, True)]


def test_every_pattern_is_distinct_and_loops(clock: FakeClock) -> None:
    shapes = {name: tuple(steps) for name, steps in PATTERNS.items()}
    assert len(set(shapes.values())) == len(shapes)
    for name in PATTERNS:
        seq = LedSequencer(name, 0.0)
        cycle = sum(ms for _, ms in PATTERNS[name]) / 1000
        for t in (0.05, 0.33, 1.71):
            if cycle:
                assert seq.state(t)[0] == seq.state(t + 7 * cycle)[0]


def test_switching_pattern_restarts_it(clock: FakeClock) -> None:
    fake = FakeLed("status", clock)
    driver = LedDriver([fake], LedSequencer("joining", clock()))
    driver.apply(clock())
    clock.advance(0.4)
    assert driver.sequencer.set("identify", clock())
    assert not driver.sequencer.set("identify", clock())
    assert driver.apply(clock()) == pytest.approx(clock() + 0.1)
    with pytest.raises(HwmonError, match="unknown LED pattern"):
        driver.sequencer.set("disco", clock())


def test_pattern_priorities() -> None:
    calm = dict(
        booting=False, network=True, joined=True, disk_problem=False,
        overheating=False, under_voltage=False, identify=False,
    )  # fmt: skip
    assert choose_pattern(**calm) == "healthy"
    assert choose_pattern(**{**calm, "joined": False}) == "joining"
    assert choose_pattern(**{**calm, "network": False, "joined": False}) == "no_network"
    assert choose_pattern(**{**calm, "booting": True, "network": False}) == "booting"
    assert choose_pattern(**{**calm, "disk_problem": True, "booting": True}) == "disk_problem"
    assert choose_pattern(**{**calm, "overheating": True, "disk_problem": True}) == "overheating"
    assert choose_pattern(**{**calm, "under_voltage": True, "overheating": True}) == (
        "under_voltage"
    )
    assert choose_pattern(**{**calm, "identify": True, "under_voltage": True}) == "identify"


def test_sysfs_led_takes_over_and_restores_trigger(tmp_path: Path) -> None:
    base = led(tmp_path, "ACT", "mmc0")
    act = SysfsLed(tmp_path, "ACT")
    assert (base / "trigger").read_text() == "none"
    act.set(True)
    assert (base / "brightness").read_text() == "1"
    act.set(False)
    assert (base / "brightness").read_text() == "0"
    act.close()
    assert (base / "trigger").read_text() == "mmc0"
    pwr_base = led(tmp_path, "PWR", "default-on")
    pwr = SysfsLed(tmp_path, "PWR")
    pwr.set(True)
    assert (pwr_base / "brightness").read_text() == "255"  # max_brightness, not 1


def test_missing_or_broken_sysfs_led(tmp_path: Path) -> None:
    with pytest.raises(DeviceMissing, match="no board LED 'ACT'"):
        SysfsLed(tmp_path, "ACT")
    with pytest.raises(DeviceMissing):
        SysfsLed(tmp_path, "../../etc")
    base = led(tmp_path, "ACT", "mmc0")
    (base / "trigger").write_text("no brackets here")
    with pytest.raises(DeviceMissing, match="unusable"):
        SysfsLed(tmp_path, "ACT")


def test_driver_reports_led_write_errors_once(tmp_path: Path, clock: FakeClock) -> None:
    base = led(tmp_path, "ACT", "mmc0")
    act = SysfsLed(tmp_path, "ACT")
    (base / "brightness").unlink()
    (base / "brightness").mkdir()  # writing now fails
    driver = LedDriver([act], LedSequencer("booting", clock()))
    for _ in range(4):
        clock.t = driver.apply(clock()) or clock.t
    assert list(driver.errors) == ["ACT"] and "brightness" in driver.errors["ACT"]


def test_gpio_led_timed_states(clock: FakeClock) -> None:
    gpio = FakeGpio(clock)
    driver = LedDriver([GpioLed(gpio, 17)], LedSequencer("joining", clock()))
    for _ in range(3):
        clock.t = driver.apply(clock()) or clock.t
    assert gpio.history(17) == [
        (1000.0, "setup", 0.0), (1000.0, "write", 1.0), (1001.0, "write", 0.0),
        (1002.0, "write", 1.0),
    ]  # fmt: skip
    driver.close()
    assert gpio.history(17)[-1] == (1003.0, "release", 0.0)


def test_fake_gpio_refuses_unset_pins() -> None:
    with pytest.raises(HwmonError, match="before setup_output"):
        FakeGpio().write(4, True)


@pytest.mark.skipif(
    importlib.util.find_spec("RPi") is not None, reason="RPi.GPIO is installed on this machine"
)
def test_missing_gpio_library_is_reported_with_the_fix() -> None:
    with pytest.raises(DeviceMissing, match="rpi-lgpio"):
        open_gpio()
