"""Sensors: SoC temperature, Raspberry Pi throttling, load, memory and clock sync.

:class:`Sensors` is the interface; :class:`LinuxSensors` reads sysfs and procfs below a root
directory (``/`` on a box, a fake tree in tests) and :class:`FakeSensors` returns what a test set
and records each read with its time. :func:`read_all` turns one round of readings into a
:class:`Readings` in which every failing sensor is a finding instead of an exception.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import subprocess
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.hwmon.errors import SensorError
from node.hwmon.findings import Finding
from node.hwmon.parse import (
    Throttled,
    parse_loadavg,
    parse_meminfo,
    parse_millidegrees,
    parse_throttled,
)

THROTTLED_FILE = "sys/devices/platform/soc/soc:firmware/get_throttled"
TIMESYNC_DIR = "run/systemd/timesync"
_READ_LIMIT = 65536
_SOC_ZONE_HINTS = ("cpu", "soc", "x86_pkg", "k10temp", "coretemp", "package")
_TIME_ERROR = 5  # adjtimex(2): clock not synchronised


def read_text(path: Path, limit: int = _READ_LIMIT) -> str:
    """A small sysfs/procfs file as text (bounded; undecodable bytes replaced)."""
    with open(path, "rb") as fh:
        return fh.read(limit).decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class ClockSync:
    synced: bool | None
    """None when this box gives no way to tell."""
    source: str


def pick_soc(temps: dict[str, float]) -> float | None:
    """The SoC/CPU temperature among all zones (the hottest when no zone is named for it)."""
    for hint in _SOC_ZONE_HINTS:
        for name, value in temps.items():
            if hint in name.lower():
                return value
    return max(temps.values()) if temps else None


class Sensors(ABC):
    """What the monitor reads each poll. Methods raise SensorError or OSError on bad data."""

    @abstractmethod
    def temperatures(self) -> dict[str, float]:
        """Every readable temperature (C) by zone name; unreadable zones are left out."""

    @abstractmethod
    def throttled(self) -> Throttled | None:
        """Raspberry Pi throttle flags, None when this is not a Pi."""

    @abstractmethod
    def load(self) -> tuple[float, float, float]: ...

    @abstractmethod
    def memory(self) -> dict[str, int]: ...

    @abstractmethod
    def clock(self) -> ClockSync: ...

    def fan_rpm(self) -> int | None:
        """Speed of a kernel-driven fan (Pi 5 cooler), None when there is none."""
        return None


class LinuxSensors(Sensors):
    """Reads ``<root>/sys`` and ``<root>/proc``; only with ``root == /`` does it run tools."""

    def __init__(self, root: Path | str = "/", *, vcgencmd_timeout: float = 2.0) -> None:
        self.root = Path(root)
        self.vcgencmd_timeout = vcgencmd_timeout
        self.bad_zones: dict[str, str] = {}

    @property
    def is_host(self) -> bool:
        return self.root == Path("/")

    def _zones(self) -> list[tuple[str, Path]]:
        zones: list[tuple[str, Path]] = []
        base = self.root / "sys/class/thermal"
        with contextlib.suppress(OSError):
            for zone in sorted(base.glob("thermal_zone*")):
                try:
                    name = read_text(zone / "type", 256).strip() or zone.name
                except OSError:
                    name = zone.name
                zones.append((name, zone / "temp"))
        base = self.root / "sys/class/hwmon"
        with contextlib.suppress(OSError):
            for hw in sorted(base.glob("hwmon*")):
                try:
                    name = read_text(hw / "name", 256).strip() or hw.name
                except OSError:
                    name = hw.name
                for temp in sorted(hw.glob("temp*_input"))[:16]:
                    zones.append((f"{name}/{temp.name.removesuffix('_input')}", temp))
        return zones

    def temperatures(self) -> dict[str, float]:
        temps: dict[str, float] = {}
        bad: dict[str, str] = {}
        for name, path in self._zones():
            try:
                value = parse_millidegrees(read_text(path, 64))
            except (OSError, SensorError) as exc:
                bad[name] = f"{path}: {exc}"
                continue
            key, n = name, 2
            while key in temps:
                key, n = f"{name}#{n}", n + 1
            temps[key] = value
        self.bad_zones = bad
        return temps

    def throttled(self) -> Throttled | None:
        path = self.root / THROTTLED_FILE
        try:
            return parse_throttled(read_text(path, 64))
        except FileNotFoundError:
            pass
        except SensorError as exc:
            raise SensorError(f"{path}: {exc}") from None
        vcgencmd = shutil.which("vcgencmd") if self.is_host else None
        if vcgencmd is None:
            return None
        try:
            out = subprocess.run(
                [vcgencmd, "get_throttled"],
                capture_output=True,
                text=True,
                timeout=self.vcgencmd_timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise SensorError(
                f"vcgencmd get_throttled did not answer within {self.vcgencmd_timeout} s"
            ) from None
        if out.returncode != 0:
            raise SensorError(f"vcgencmd get_throttled failed: {out.stderr.strip()[:80]!r}")
        return parse_throttled(out.stdout)

    def under_voltage_alarm(self) -> bool | None:
        """The ``rpi_volt`` hwmon alarm (Pi 4/5 kernels), None when absent."""
        with contextlib.suppress(OSError):
            for hw in sorted((self.root / "sys/class/hwmon").glob("hwmon*")):
                with contextlib.suppress(OSError):
                    if read_text(hw / "name", 64).strip() == "rpi_volt":
                        return read_text(hw / "in0_lcrit_alarm", 16).strip() == "1"
        return None

    def fan_rpm(self) -> int | None:
        with contextlib.suppress(OSError):
            for hw in sorted((self.root / "sys/class/hwmon").glob("hwmon*")):
                with contextlib.suppress(OSError, ValueError):
                    if "fan" in read_text(hw / "name", 64):
                        rpm = int(read_text(hw / "fan1_input", 32).strip())
                        if 0 <= rpm < 100_000:
                            return rpm
        return None

    def load(self) -> tuple[float, float, float]:
        return parse_loadavg(read_text(self.root / "proc/loadavg", 256))

    def memory(self) -> dict[str, int]:
        return parse_meminfo(read_text(self.root / "proc/meminfo"))

    def clock(self) -> ClockSync:
        base = self.root / TIMESYNC_DIR
        if (base / "synchronized").exists():
            return ClockSync(True, "systemd-timesyncd")
        if base.is_dir():
            return ClockSync(False, "systemd-timesyncd")
        if not self.is_host:
            return ClockSync(None, "none")
        return _adjtimex_sync()


@functools.cache
def libc() -> ctypes.CDLL:
    """The C library, loaded once (``find_library`` would run a subprocess each time)."""
    return ctypes.CDLL(None, use_errno=True)


def _adjtimex_sync() -> ClockSync:
    try:
        buf = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = int(libc().adjtimex(buf))
    except (OSError, AttributeError):
        return ClockSync(None, "none")
    if state < 0:
        return ClockSync(None, "adjtimex")
    return ClockSync(state != _TIME_ERROR, "adjtimex")


class FakeSensors(Sensors):
    """In-memory sensors for tests: set the attributes, read them back; reads are recorded."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.temps: dict[str, float] = {"cpu-thermal": 45.0}
        self.throttle: Throttled | None = Throttled.from_int(0)
        self.loadavg = (0.1, 0.1, 0.1)
        self.mem = {"MemTotal": 1 << 30, "MemAvailable": 1 << 29}
        self.clock_state = ClockSync(True, "fake")
        self.rpm: int | None = None
        self.error: Exception | None = None
        """When set, every read raises it (a sensor gone bad)."""
        self.reads: list[tuple[float, str]] = []

    def _read(self, what: str) -> None:
        self.reads.append((self._clock(), what))
        if self.error is not None:
            raise self.error

    def temperatures(self) -> dict[str, float]:
        self._read("temperatures")
        return dict(self.temps)

    def throttled(self) -> Throttled | None:
        self._read("throttled")
        return self.throttle

    def load(self) -> tuple[float, float, float]:
        self._read("load")
        return self.loadavg

    def memory(self) -> dict[str, int]:
        self._read("memory")
        return dict(self.mem)

    def clock(self) -> ClockSync:
        self._read("clock")
        return self.clock_state

    def fan_rpm(self) -> int | None:
        return self.rpm


@dataclass
class Readings:
    """One round of sensor readings; a sensor that failed is a finding, not a value."""

    soc_temp_c: float | None = None
    temps: dict[str, float] = field(default_factory=dict)
    throttled: Throttled | None = None
    under_voltage_alarm: bool | None = None
    load: tuple[float, float, float] | None = None
    memory: dict[str, int] | None = None
    clock: ClockSync | None = None
    fan_rpm: int | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def under_voltage_now(self) -> bool:
        return bool(
            (self.throttled and self.throttled.now["under_voltage"]) or self.under_voltage_alarm
        )

    def to_json(self) -> dict[str, Any]:
        mem = self.memory or {}
        return {
            "cpu_temp_c": self.soc_temp_c,
            "temperatures": dict(self.temps),
            "throttled": self.throttled.to_json() if self.throttled else None,
            "under_voltage_alarm": self.under_voltage_alarm,
            "load": list(self.load) if self.load else None,
            "cpus": os.cpu_count(),
            "memory": {
                "total": mem.get("MemTotal"),
                "available": mem.get("MemAvailable"),
            }
            if mem
            else None,
            "clock": {"synced": self.clock.synced, "source": self.clock.source}
            if self.clock
            else None,
            "fan_rpm": self.fan_rpm,
        }


def _attempt(readings: Readings, check: str, action: str, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except (OSError, SensorError) as exc:
        message = str(exc) if isinstance(exc, SensorError) else f"{exc.strerror}: {exc.filename}"
        readings.findings.append(Finding("warn", check, message, action))
        return None


def read_all(sensors: Sensors) -> Readings:
    """Read every sensor once; failures become findings."""
    r = Readings()
    fix = "check the kernel's sensor drivers; the monitor keeps running without this reading"
    r.temps = _attempt(r, "temperature", fix, sensors.temperatures) or {}
    r.soc_temp_c = pick_soc(r.temps)
    if isinstance(sensors, LinuxSensors):
        for problem in sensors.bad_zones.values():
            r.findings.append(Finding("warn", "temperature", f"unreadable zone {problem}", fix))
        r.under_voltage_alarm = sensors.under_voltage_alarm()
    r.throttled = _attempt(r, "throttling", "update the Pi firmware", sensors.throttled)
    r.load = _attempt(r, "load", fix, sensors.load)
    r.memory = _attempt(r, "memory", fix, sensors.memory)
    r.clock = _attempt(r, "clock", fix, sensors.clock)
    r.fan_rpm = _attempt(r, "fan", fix, sensors.fan_rpm)
    r.findings = list({(f.check, f.message): f for f in r.findings}.values())
    return r
