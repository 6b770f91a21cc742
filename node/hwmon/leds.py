"""Status LEDs: the board's sysfs LEDs and GPIO LEDs, and the blink patterns they show.

Theory of operation: a pattern is a loop of ``(on, milliseconds)`` steps (a single step of
0 ms holds forever). :class:`LedSequencer` is sans-I/O: ``state(now)`` gives the level the LEDs
must show and when it next changes. :class:`LedDriver` writes that level to every :class:`Led`
only when it changes, so a steady pattern costs no wake-ups at all. The blink counts follow the
Raspberry Pi's own habit of telling faults apart by the number of flashes.
"""

from __future__ import annotations

import contextlib
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from node.hwmon.errors import DeviceMissing, HwmonError, SensorError
from node.hwmon.gpio import Gpio
from node.hwmon.parse import parse_led_trigger

Pattern = tuple[tuple[bool, int], ...]
_EPSILON = 1e-6  # an edge reached within a microsecond counts as passed (float rounding)


def _flashes(n: int, on_ms: int = 200, off_ms: int = 200, pause_ms: int = 1400) -> Pattern:
    steps: list[tuple[bool, int]] = []
    for i in range(n):
        steps += [(True, on_ms), (False, pause_ms if i == n - 1 else off_ms)]
    return tuple(steps)


PATTERNS: dict[str, Pattern] = {
    "booting": ((True, 250), (False, 250)),
    "no_network": _flashes(2),
    "joining": ((True, 1000), (False, 1000)),
    "healthy": ((True, 0),),
    "disk_problem": _flashes(3),
    "overheating": _flashes(4),
    "under_voltage": _flashes(5),
    "identify": ((True, 100), (False, 100)),
}
"""Every pattern the box shows, by name."""


def choose_pattern(
    *,
    booting: bool,
    network: bool,
    joined: bool,
    disk_problem: bool,
    overheating: bool,
    under_voltage: bool,
    identify: bool,
) -> str:
    """The pattern for the box's state, most urgent first."""
    for name, active in (
        ("identify", identify),
        ("under_voltage", under_voltage),
        ("overheating", overheating),
        ("disk_problem", disk_problem),
        ("booting", booting),
        ("no_network", not network),
        ("joining", not joined),
    ):
        if active:
            return name
    return "healthy"


class LedSequencer:
    """Which level a pattern shows at a given time; no I/O."""

    def __init__(self, pattern: str = "booting", now: float = 0.0) -> None:
        self.pattern = pattern
        self.started = now

    def set(self, pattern: str, now: float) -> bool:
        """Switch pattern (restarting it at ``now``); returns whether it changed."""
        if pattern not in PATTERNS:
            raise HwmonError(f"unknown LED pattern {pattern!r}; known: {', '.join(PATTERNS)}")
        if pattern == self.pattern:
            return False
        self.pattern, self.started = pattern, now
        return True

    def state(self, now: float) -> tuple[bool, float | None]:
        """(level, time of the next change or None when it holds)."""
        steps = PATTERNS[self.pattern]
        cycle = sum(ms for _, ms in steps) / 1000.0
        if cycle == 0:
            return steps[0][0], None
        elapsed = max(0.0, now - self.started) + _EPSILON
        k = math.floor(elapsed / cycle)
        base = self.started + k * cycle
        edge = base
        for on, ms in steps:
            edge += ms / 1000.0
            if now + _EPSILON < edge:
                return on, edge
        return steps[0][0], edge + steps[0][1] / 1000.0


class Led(ABC):
    """One on/off light."""

    name: str

    @abstractmethod
    def set(self, on: bool) -> None: ...

    @abstractmethod
    def close(self) -> None:
        """Give the LED back as it was found."""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name}


class SysfsLed(Led):
    """A kernel LED (``<root>/sys/class/leds/<name>``): takes it over, restores its trigger."""

    def __init__(self, root: Path | str, name: str) -> None:
        self.name = name
        self.path = Path(root) / "sys/class/leds" / name
        if "/" in name or name.startswith(".") or not self.path.is_dir():
            raise DeviceMissing(f"no board LED {name!r} at {self.path}")
        try:
            self.original_trigger, _ = parse_led_trigger(
                (self.path / "trigger").read_text(errors="replace")[:4096]
            )
            max_text = (self.path / "max_brightness").read_text(errors="replace")[:32].strip()
        except (OSError, SensorError) as exc:
            raise DeviceMissing(f"board LED {name!r} at {self.path} is unusable: {exc}") from None
        self.on_value = max_text if max_text.isdigit() and int(max_text) > 0 else "1"
        self._write("trigger", "none")
        self.lit: bool | None = None

    def _write(self, attr: str, value: str) -> None:
        try:
            with open(self.path / attr, "w") as fh:
                fh.write(value)
        except OSError as exc:
            raise HwmonError(
                f"cannot write {value!r} to {self.path / attr}: {exc.strerror}; "
                "the agent needs write access to the LED (udev rule or root)"
            ) from None

    def set(self, on: bool) -> None:
        self._write("brightness", self.on_value if on else "0")
        self.lit = on

    def close(self) -> None:
        self._write("trigger", self.original_trigger)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "sysfs", "on": self.lit,
                "restores_trigger": self.original_trigger}  # fmt: skip


class GpioLed(Led):
    """An LED on a GPIO pin."""

    def __init__(self, gpio: Gpio, pin: int, *, active_high: bool = True) -> None:
        self.name = f"gpio{pin}"
        self.gpio, self.pin, self.active_high = gpio, pin, active_high
        gpio.setup_output(pin, not active_high)
        self.lit: bool | None = None

    def set(self, on: bool) -> None:
        self.gpio.write(self.pin, on == self.active_high)
        self.lit = on

    def close(self) -> None:
        self.gpio.release(self.pin)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "kind": "gpio", "pin": self.pin, "on": self.lit}


class FakeLed(Led):
    """Records ``(time, on)`` for each change."""

    def __init__(self, name: str = "fake", clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._clock = clock
        self.states: list[tuple[float, bool]] = []
        self.closed = False

    def set(self, on: bool) -> None:
        self.states.append((self._clock(), on))

    def close(self) -> None:
        self.closed = True


class LedDriver:
    """Shows the sequencer's level on every LED, writing only on changes."""

    def __init__(self, leds: Sequence[Led], sequencer: LedSequencer | None = None) -> None:
        self.leds = list(leds)
        self.sequencer = sequencer or LedSequencer()
        self.level: bool | None = None
        self.errors: dict[str, str] = {}
        """The last write error of each LED that failed (reported, never raised)."""

    def apply(self, now: float) -> float | None:
        """Update the LEDs for ``now``; returns when to call again (None: on a change only)."""
        on, next_change = self.sequencer.state(now)
        if on != self.level:
            self.level = on
            for led in self.leds:
                try:
                    led.set(on)
                except HwmonError as exc:
                    self.errors[led.name] = str(exc)
        return next_change

    def close(self) -> None:
        for led in self.leds:
            with contextlib.suppress(HwmonError):
                led.close()
