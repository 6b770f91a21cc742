"""The RPi.GPIO backend against stand-in RPi packages put first on sys.path.

The real library only imports on a Raspberry Pi; these packages reproduce its two behaviours
that matter here: failing at import (RPi.GPIO on a Pi 5 or a PC) and the calls it accepts.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.hwmon.errors import DeviceMissing
from node.hwmon.gpio import PwmFan, RPiGpio, open_gpio

RECORDING = """
BCM, OUT, HIGH, LOW = 11, 0, 1, 0
calls = []
def setwarnings(flag): calls.append(("setwarnings", flag))
def setmode(mode): calls.append(("setmode", mode))
def setup(pin, mode, initial=0): calls.append(("setup", pin, mode, initial))
def output(pin, value): calls.append(("output", pin, value))
def cleanup(pin): calls.append(("cleanup", pin))
class PWM:
    def __init__(self, pin, hz): self.pin = pin; calls.append(("PWM", pin, hz))
    def start(self, duty): calls.append(("start", self.pin, duty))
    def ChangeDutyCycle(self, duty): calls.append(("duty", self.pin, duty))
    def stop(self): calls.append(("stop", self.pin))
"""


@pytest.fixture
def rpi_package(tmp_path: Path) -> Iterator[Path]:
    pkg = tmp_path / "site" / "RPi"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    sys.path.insert(0, str(pkg.parent))
    try:
        yield pkg
    finally:
        sys.path.remove(str(pkg.parent))
        for name in ("RPi.GPIO", "RPi"):
            sys.modules.pop(name, None)


def test_rpi_gpio_failing_at_import_as_on_a_pi5(rpi_package: Path) -> None:
    (rpi_package / "GPIO.py").write_text(
        "raise RuntimeError('Cannot determine SOC peripheral base address')\n"
    )
    with pytest.raises(DeviceMissing) as info:
        open_gpio()
    assert "Cannot determine SOC peripheral base address" in str(info.value)
    assert "rpi-lgpio" in str(info.value)


def test_fan_through_the_rpi_gpio_api(rpi_package: Path) -> None:
    (rpi_package / "GPIO.py").write_text(RECORDING)
    gpio = RPiGpio()
    fan = PwmFan(gpio, 18, 100.0)
    fan.set_duty(40.0)
    fan.set_duty(40.0)  # unchanged: no call
    fan.set_duty(120.0)  # clamped
    fan.close()
    calls = sys.modules["RPi.GPIO"].calls
    assert calls == [
        ("setwarnings", False), ("setmode", 11), ("setup", 18, 0, 0), ("PWM", 18, 100.0),
        ("start", 18, 40.0), ("duty", 18, 100.0), ("stop", 18), ("cleanup", 18),
    ]  # fmt: skip
