"""GPIO output pins and PWM, behind one small interface.

:class:`Gpio` is what a backend must provide (outputs and PWM on BCM pin numbers).
:class:`RPiGpio` drives real pins through the ``RPi.GPIO`` API, imported only when a pin is
configured (``rpi-lgpio`` provides that API on the Pi 5, where ``RPi.GPIO`` itself fails).
Without it :func:`open_gpio` raises :class:`DeviceMissing` with what to install, once; the
caller turns that into a finding. :class:`FakeGpio` records every state with its time, in the
manner of gpiozero's ``MockPin.states``.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from node.hwmon.errors import DeviceMissing, HwmonError

INSTALL_HINT = (
    "install the GPIO library: pip install 'bitchat-node[pi]' "
    "(rpi-lgpio, which provides RPi.GPIO on every Pi including the Pi 5)"
)


class Gpio(ABC):
    """Output pins by BCM number. Backends must implement every method."""

    name: str = "gpio"

    @abstractmethod
    def setup_output(self, pin: int, value: bool = False) -> None:
        """Make ``pin`` an output at ``value``."""

    @abstractmethod
    def write(self, pin: int, value: bool) -> None: ...

    @abstractmethod
    def pwm(self, pin: int, hz: float, duty: float) -> None:
        """Run PWM on ``pin`` at ``duty`` percent (starts it on first use)."""

    @abstractmethod
    def release(self, pin: int) -> None:
        """Stop PWM, drive low and give the pin back."""


class RPiGpio(Gpio):
    """Pins through the RPi.GPIO API (RPi.GPIO or rpi-lgpio)."""

    name = "RPi.GPIO"

    def __init__(self) -> None:
        try:
            import RPi.GPIO as gpio  # type: ignore[import-not-found,import-untyped,unused-ignore]
        except ImportError:
            raise DeviceMissing(f"no RPi.GPIO module; {INSTALL_HINT}") from None
        except RuntimeError as exc:
            raise DeviceMissing(f"RPi.GPIO cannot run here ({exc}); {INSTALL_HINT}") from None
        self._gpio: Any = gpio
        self._pwm: dict[int, Any] = {}
        try:
            gpio.setwarnings(False)
            gpio.setmode(gpio.BCM)
        except Exception as exc:
            raise DeviceMissing(f"cannot open the GPIO chip ({exc}); {INSTALL_HINT}") from None

    def setup_output(self, pin: int, value: bool = False) -> None:
        try:
            self._gpio.setup(pin, self._gpio.OUT, initial=self._gpio.HIGH if value else 0)
        except Exception as exc:
            raise HwmonError(f"cannot use GPIO {pin} as an output: {exc}") from None

    def write(self, pin: int, value: bool) -> None:
        self._gpio.output(pin, self._gpio.HIGH if value else self._gpio.LOW)

    def pwm(self, pin: int, hz: float, duty: float) -> None:
        p = self._pwm.get(pin)
        if p is None:
            p = self._pwm[pin] = self._gpio.PWM(pin, hz)
            p.start(duty)
        else:
            p.ChangeDutyCycle(duty)

    def release(self, pin: int) -> None:
        p = self._pwm.pop(pin, None)
        if p is not None:
            p.stop()
        self._gpio.cleanup(pin)


@dataclass(frozen=True, slots=True)
class PinState:
    at: float
    pin: int
    kind: str
    """``setup``, ``write``, ``pwm`` or ``release``."""
    value: float


class FakeGpio(Gpio):
    """In-memory pins that record each change with its time (``states``)."""

    name = "fake"

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.states: list[PinState] = []
        self.values: dict[int, float] = {}
        self.outputs: set[int] = set()

    def _record(self, pin: int, kind: str, value: float) -> None:
        self.states.append(PinState(self._clock(), pin, kind, value))
        self.values[pin] = value

    def setup_output(self, pin: int, value: bool = False) -> None:
        self.outputs.add(pin)
        self._record(pin, "setup", float(value))

    def write(self, pin: int, value: bool) -> None:
        if pin not in self.outputs:
            raise HwmonError(f"GPIO {pin} written before setup_output")
        self._record(pin, "write", float(value))

    def pwm(self, pin: int, hz: float, duty: float) -> None:
        if pin not in self.outputs:
            raise HwmonError(f"GPIO {pin} PWM before setup_output")
        self._record(pin, "pwm", duty)

    def release(self, pin: int) -> None:
        self.outputs.discard(pin)
        self._record(pin, "release", 0.0)

    def history(self, pin: int) -> list[tuple[float, str, float]]:
        return [(s.at, s.kind, s.value) for s in self.states if s.pin == pin]


def open_gpio() -> Gpio:
    """The real GPIO backend; raises :class:`DeviceMissing` saying what to install."""
    return RPiGpio()


class PwmFan:
    """A fan switched by a transistor on one PWM pin."""

    def __init__(self, gpio: Gpio, pin: int, hz: float = 100.0) -> None:
        self.gpio, self.pin, self.hz = gpio, pin, hz
        self.duty = 0.0
        gpio.setup_output(pin, False)

    def set_duty(self, duty: float) -> None:
        duty = min(100.0, max(0.0, duty))
        if duty != self.duty:
            self.gpio.pwm(self.pin, self.hz, duty)
            self.duty = duty

    def close(self) -> None:
        self.gpio.release(self.pin)

    def to_json(self) -> dict[str, Any]:
        return {"pin": self.pin, "duty": self.duty, "hz": self.hz, "backend": self.gpio.name}
