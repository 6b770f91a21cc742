"""The ``hwmon`` agent service: polls the hardware, applies the policies, drives fan and LEDs.

Theory of operation: every ``poll_interval_s`` the service reads the sensors and probes the data
disk in one worker-thread round (so neither a hung USB disk nor ``vcgencmd`` stalls the loop),
then :meth:`apply` feeds the readings to the sans-I/O :class:`ThermalPolicy`,
:class:`DiskPolicy` and :class:`ClockPolicy`; their changes become work limits (``ctx.limits``)
and events with their reasons. A separate LED task sleeps until the next edge of the current
pattern (a steady pattern sleeps until something changes). SMART runs rarely, in the
background, at idle I/O priority. Nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node import log
from node.events import Level
from node.hwmon.clock import ACTION as CLOCK_ACTION
from node.hwmon.clock import LIMIT_REASON as CLOCK_REASON
from node.hwmon.clock import ClockChange, ClockPolicy, clock_floor
from node.hwmon.disks import (
    LIMIT_REASON,
    DiskChange,
    DiskPolicy,
    DiskProbe,
    DiskReading,
    LinuxDiskProbe,
    data_disk_dir,
)
from node.hwmon.errors import DeviceMissing, HwmonError, SensorError
from node.hwmon.findings import Finding, by_severity
from node.hwmon.gpio import Gpio, PwmFan, open_gpio
from node.hwmon.leds import GpioLed, Led, LedDriver, LedSequencer, SysfsLed, choose_pattern
from node.hwmon.parse import THROTTLE_FLAGS, SmartReport, parse_default_route
from node.hwmon.sensors import ClockSync, LinuxSensors, Readings, Sensors, read_all, read_text
from node.hwmon.smart import read_smart, smart_finding
from node.hwmon.thermal import LevelChange, ThermalConfig, ThermalLevel, ThermalPolicy
from node.limits import Restriction

if TYPE_CHECKING:
    from node.agent import AgentContext

_log = log.get_logger(__name__)
DISK_PROBE_TIMEOUT = 5.0
SMART_FIRST_DELAY = 300.0
MAX_IDENTIFY_S = 3600.0
IO_ERROR_EVENT_EVERY = 60.0
_PEER_KEYS = ("dht_peers", "routing_table_peers", "peers", "sessions")


class HwmonService:
    """Hardware monitor of the box (service name ``hwmon``)."""

    name = "hwmon"

    def __init__(
        self,
        ctx: AgentContext,
        *,
        sensors: Sensors | None = None,
        disk_probe: DiskProbe | None = None,
        gpio: Gpio | None = None,
        leds: Sequence[Led] | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.hwmon
        self.root = Path(self.cfg.sysfs_root)
        self.clock = clock
        self.wall = wall
        self.data_disk = data_disk_dir(ctx.config, ctx.data_dir)
        self.sensors = sensors or LinuxSensors(self.root)
        self.disk_probe = disk_probe or LinuxDiskProbe(self.root)
        self.policy = ThermalPolicy(ThermalConfig.from_section(self.cfg))
        self.disk_policy = DiskPolicy(self.cfg.low_space_percent)
        self.clock_policy = ClockPolicy()
        self.clock_floor = clock_floor(self.root)
        self._gpio = gpio
        self._given_leds = list(leds) if leds is not None else None
        self.leds: LedDriver = LedDriver([], LedSequencer("booting", clock()))
        self.fan: PwmFan | None = None
        self.readings: Readings | None = None
        self.disk: DiskReading | None = None
        self.expected_mount: str | None = self.cfg.data_mount or None
        self.smart: SmartReport | None = None
        self.smart_result: Finding | None = None
        self.thermal_reason = "no reading yet"
        self.under_voltage = False
        self._supply_bad_at = 0.0
        self._io_errors_pending = 0
        self._io_errors_told = float("-inf")
        self.polls = 0
        self.polled_at: float | None = None
        self._devices_open = False
        self._device_findings: dict[str, Finding] = {}
        self._box: dict[str, bool] = {"booting": True, "network": True, "joined": True}
        self._identify_until = 0.0
        self._led_wake = asyncio.Event()
        self._round: asyncio.Future[tuple[Readings, DiskReading]] | None = None
        self.disk_probe_timeout = DISK_PROBE_TIMEOUT
        self._smart_task: asyncio.Task[None] | None = None
        self._next_smart = clock() + SMART_FIRST_DELAY

    # -- devices -------------------------------------------------------------------------------

    def _missing(self, key: str, finding: Finding) -> None:
        """Report a missing device once: an event and a standing finding."""
        if key not in self._device_findings:
            self._device_findings[key] = finding
            self.ctx.events.emit("warning", self.name, finding.message, action=finding.action)
            _log.warning("device_missing", device=key, reason=finding.message)

    def _open_devices(self) -> None:
        leds: list[Led] = []
        if self._given_leds is not None:
            leds = list(self._given_leds)
        else:
            for name in self.cfg.leds:
                try:
                    leds.append(SysfsLed(self.root, name))
                except (DeviceMissing, HwmonError) as exc:
                    self._missing(
                        f"led:{name}",
                        Finding(
                            "warn",
                            "leds",
                            str(exc),
                            "set [hwmon] leds to the LEDs this board has, or [] for none",
                        ),
                    )
        if self.cfg.fan_pin >= 0 or self.cfg.led_pin >= 0:
            gpio = self._gpio_backend()
            if gpio is not None and self.cfg.fan_pin >= 0:
                try:
                    self.fan = PwmFan(gpio, self.cfg.fan_pin, self.cfg.fan_pwm_hz)
                except HwmonError as exc:
                    self._missing("fan", Finding("warn", "fan", str(exc), "check [hwmon] fan_pin"))
            if gpio is not None and self.cfg.led_pin >= 0:
                try:
                    leds.append(GpioLed(gpio, self.cfg.led_pin))
                except HwmonError as exc:
                    self._missing("gpio-led", Finding("warn", "leds", str(exc), "check led_pin"))
        self.leds = LedDriver(leds, self.leds.sequencer)
        self._devices_open = True

    def _gpio_backend(self) -> Gpio | None:
        if self._gpio is None:
            try:
                self._gpio = open_gpio()
            except DeviceMissing as exc:
                self._missing(
                    "gpio",
                    Finding(
                        "warn",
                        "gpio",
                        f"GPIO fan/LED configured but unavailable: {exc}",
                        "install rpi-lgpio, or set [hwmon] fan_pin and led_pin to -1",
                    ),
                )
        return self._gpio

    def _close_devices(self) -> None:
        self.leds.close()
        if self.fan is not None:
            with contextlib.suppress(HwmonError, RuntimeError):
                self.fan.close()
            self.fan = None
        self._devices_open = False

    # -- service protocol ----------------------------------------------------------------------

    async def start(self) -> None:
        if not self._devices_open:
            self._open_devices()
        # Judge the clock before any other service takes work: the first poll comes later.
        try:
            sync = await asyncio.to_thread(self.sensors.clock)
        except (OSError, SensorError):
            sync = None
        self._clock_step(sync)
        if self.expected_mount is None:
            first = await asyncio.to_thread(self.disk_probe.probe, self.data_disk, None)
            if first.present and first.mountpoint and first.mountpoint != "/":
                self.expected_mount = first.mountpoint

    async def run(self) -> None:
        led_task = asyncio.create_task(self._led_loop(), name="hwmon:leds")
        try:
            while True:
                await self.poll()
                await asyncio.sleep(self.cfg.poll_interval_s)
        finally:
            led_task.cancel()
            if self._smart_task is not None:
                self._smart_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await led_task
            self._close_devices()

    def status(self) -> dict[str, Any]:
        findings = self.findings()
        return {
            "thermal_level": self.policy.level.label,
            "cpu_temp_c": self.readings.soc_temp_c if self.readings else None,
            "disk": self.disk_policy.state,
            "clock": self.clock_policy.state,
            "led_pattern": self._pattern(self.clock()),
            "polls": self.polls,
            "warnings": sum(f.level == "warn" for f in findings),
            "failures": sum(f.level == "fail" for f in findings),
        }

    # -- polling -------------------------------------------------------------------------------

    def _read_round(self) -> tuple[Readings, DiskReading]:
        return read_all(self.sensors), self.disk_probe.probe(self.data_disk, self.expected_mount)

    async def _read(self) -> tuple[Readings, DiskReading]:
        """Sensors and disk, read in a worker thread so that nothing blocks the event loop.

        When the round takes longer than ``disk_probe_timeout`` (a hung USB disk), the disk
        counts as missing and the temperature as unknown; the round is not started again
        until the stuck one returns.
        """
        if self._round is None:
            loop = asyncio.get_running_loop()
            self._round = loop.run_in_executor(None, self._read_round)
        done, _ = await asyncio.wait({self._round}, timeout=self.disk_probe_timeout)
        if not done:
            why = f"blocked for over {self.disk_probe_timeout:g} s"
            stuck = Finding("warn", "sensors", f"reading the sensors and the data disk {why}")
            return Readings(findings=[stuck]), DiskReading(
                str(self.data_disk), False, f"the data disk does not answer ({why})"
            )
        fut, self._round = self._round, None
        return fut.result()

    async def poll(self) -> None:
        """One round: read, decide, act."""
        readings, disk = await self._read()
        self.apply(readings, disk, self.clock())
        self._maybe_smart()

    def apply(self, readings: Readings, disk: DiskReading, now: float) -> None:
        """Feed one round of readings to the policies and act on what they decide."""
        self.readings, self.disk = readings, disk
        self.polls += 1
        self.polled_at = time.time()
        change = self.policy.update(readings.soc_temp_c, now)
        if change is not None:
            self._thermal_changed(change)
        elif self.policy.last_temp_c is not None and self.thermal_reason == "no reading yet":
            self.thermal_reason = f"SoC at {self.policy.last_temp_c:.1f} C"
        if self.fan is not None:
            try:
                self.fan.set_duty(self.policy.fan_duty)
            except (HwmonError, RuntimeError) as exc:
                self._missing("fan-write", Finding("warn", "fan", f"fan: {exc}", "check wiring"))
        self._power(readings, now)
        self._clock_step(readings.clock)
        disk_change = self.disk_policy.update(disk)
        if disk_change is not None:
            self._disk_changed(disk_change)
        self._io_errors_pending += self.disk_policy.new_io_errors
        if self._io_errors_pending and now - self._io_errors_told >= IO_ERROR_EVENT_EVERY:
            self.ctx.events.emit(
                "warning",
                self.name,
                f"{self._io_errors_pending} new I/O errors on {disk.device}",
                device=disk.device,
                total=self.disk_policy.io_errors,
            )
            self._io_errors_pending, self._io_errors_told = 0, now
        self._box = {
            "booting": False,
            "network": self._network_up(),
            "joined": self._joined(),
        }
        self._led_wake.set()

    def _thermal_changed(self, change: LevelChange) -> None:
        self.thermal_reason = change.reason
        self.ctx.limits.set("thermal", change.restriction)
        rising = change.new > change.old
        level: Level = (
            "error"
            if change.new == ThermalLevel.CRITICAL
            else "warning"
            if rising and change.new >= ThermalLevel.HOT
            else "info"
        )
        self.ctx.events.emit(
            level,
            self.name,
            change.reason,
            old=change.old.label,
            new=change.new.label,
            temp_c=change.temp_c,
        )
        _log.info("thermal_level", old=change.old.label, new=change.new.label, temp_c=change.temp_c)

    def _clock_step(self, sync: ClockSync | None) -> None:
        change = self.clock_policy.update(sync, self.wall(), self.clock_floor)
        if change is not None:
            self._clock_changed(change)

    def _clock_changed(self, change: ClockChange) -> None:
        self.ctx.limits.set(CLOCK_REASON, change.restriction)
        if change.far_off:
            self.ctx.events.emit(
                "error",
                self.name,
                f"{change.reason}: uploads, audits and background scans stopped until the "
                "time is synchronised",
                action=CLOCK_ACTION,
            )
        else:
            self.ctx.events.emit("info", self.name, f"{change.reason}: all work resumes")
        _log.info("clock_state", far_off=change.far_off, reason=change.reason)

    def _disk_changed(self, change: DiskChange) -> None:
        self.ctx.limits.set(LIMIT_REASON, change.restriction)
        what = {
            "ok": "all disk work resumes",
            "low_space": "new uploads refused",
            "read_only": "uploads and background scans stopped",
            "missing": "uploads, audits and background scans stopped until it returns",
        }[change.new]
        level: Level = (
            "info" if change.new == "ok" else "error" if change.new == "missing" else "warning"
        )
        self.ctx.events.emit(
            level,
            self.name,
            f"{change.reason}; {what}",
            old=change.old,
            new=change.new,
        )
        _log.info("disk_state", old=change.old, new=change.new, reason=change.reason)

    def _power(self, r: Readings, now: float) -> None:
        """Under-voltage holds until the supply stayed good for ``cool_down_s`` (no flapping)."""
        sagging = r.under_voltage_now
        if sagging:
            self._supply_bad_at = now
        elif self.under_voltage and now - self._supply_bad_at < self.cfg.cool_down_s:
            return
        if sagging == self.under_voltage:
            return
        self.under_voltage = sagging
        if sagging:
            self.ctx.limits.set("power", Restriction(pause_background=True))
            self.ctx.events.emit(
                "warning",
                self.name,
                "under-voltage: the power supply sags; background scans paused "
                "(use the official supply and a short, thick cable)",
            )
        else:
            self.ctx.limits.set("power", None)
            self.ctx.events.emit("info", self.name, "supply voltage is back to normal")

    def _network_up(self) -> bool:
        try:
            return parse_default_route(read_text(self.root / "proc/net/route"))
        except OSError:
            return True

    def _joined(self) -> bool:
        for name in ("overlay", "dht", "transport", "storage"):
            svc = self.ctx.services.get(name)
            if svc is None:
                continue
            try:
                st = svc.status()
            except Exception:
                continue
            for key in _PEER_KEYS:
                value = st.get(key)
                if isinstance(value, int) and not isinstance(value, bool):
                    return value > 0
        return True

    def _maybe_smart(self) -> None:
        now = self.clock()
        disk = self.disk
        if now < self._next_smart or disk is None or not disk.present:
            return
        if not (disk.device or "").startswith("/dev/"):
            return
        if self._smart_task is not None and not self._smart_task.done():
            return
        self._next_smart = now + self.cfg.smart_interval_s
        self._smart_task = asyncio.create_task(self.check_smart(str(disk.device)))

    async def check_smart(self, device: str) -> None:
        try:
            self.smart = await read_smart(self.cfg.smartctl, device, self.cfg.smart_timeout_s)
        except SensorError as exc:
            self.smart = None
            self.smart_result = Finding(
                "warn", "smart", str(exc), "check the disk and its USB bridge; see doctor"
            )
        else:
            self.smart_result = smart_finding(self.smart)
        if self.smart_result.level != "ok":
            self.ctx.events.emit(
                "warning" if self.smart_result.level == "warn" else "error",
                self.name,
                self.smart_result.message,
            )

    # -- LEDs ----------------------------------------------------------------------------------

    def _pattern(self, now: float) -> str:
        level = self.policy.level
        return choose_pattern(
            booting=self._box["booting"],
            network=self._box["network"],
            joined=self._box["joined"],
            disk_problem=self.disk_policy.state in ("missing", "read_only"),
            overheating=level >= ThermalLevel.HOT,
            under_voltage=self.under_voltage,
            identify=now < self._identify_until,
        )

    def led_step(self, now: float) -> float | None:
        """Bring the LEDs up to date for ``now``; returns when they next need attention."""
        self.leds.sequencer.set(self._pattern(now), now)
        if not self.leds.leds:
            return None  # nothing to blink: no wake-ups
        nxt = self.leds.apply(now)
        if now < self._identify_until:
            nxt = self._identify_until if nxt is None else min(nxt, self._identify_until)
        return nxt

    async def _led_loop(self) -> None:
        while True:
            self._led_wake.clear()
            nxt = self.led_step(self.clock())
            timeout = None if nxt is None else max(0.0, nxt - self.clock())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._led_wake.wait(), timeout)

    async def identify(self, seconds: float) -> None:
        """Blink every status LED fast for ``seconds`` so the owner can find this box."""
        if not isinstance(seconds, int | float) or not seconds == seconds or seconds <= 0:
            raise HwmonError(f"identify needs a positive number of seconds, got {seconds!r}")
        seconds = min(float(seconds), MAX_IDENTIFY_S)
        self._identify_until = self.clock() + seconds
        _log.info("identify", seconds=seconds, leds=len(self.leds.leds))
        self._led_wake.set()

    # -- reporting -----------------------------------------------------------------------------

    def findings(self) -> list[Finding]:
        out = list(self._device_findings.values())
        r = self.readings
        if r is not None:
            out += r.findings
            if r.soc_temp_c is None and not any(f.check == "temperature" for f in r.findings):
                out.append(
                    Finding("warn", "temperature", "no temperature sensor found on this board")
                )
            if r.under_voltage_now:
                out.append(
                    Finding(
                        "fail",
                        "power",
                        "under-voltage now",
                        "use the official power supply and a short, thick cable",
                    )
                )
            elif r.throttled is not None and r.throttled.since_boot["under_voltage"]:
                out.append(
                    Finding(
                        "warn",
                        "power",
                        "under-voltage happened since boot",
                        "use the official power supply and a short, thick cable",
                    )
                )
            if r.throttled is not None and (
                r.throttled.now["throttled"] or r.throttled.now["frequency_capped"]
            ):
                out.append(Finding("warn", "throttling", "the firmware is throttling the CPU now"))
            if r.clock is not None and r.clock.synced is False and not self.clock_policy.far_off:
                out.append(
                    Finding(
                        "warn",
                        "clock",
                        f"system clock is not synchronised ({r.clock.source})",
                        "enable NTP: timedatectl set-ntp true",
                    )
                )
        if self.clock_policy.far_off:
            out.append(Finding("fail", "clock", self.clock_policy.reason, CLOCK_ACTION))
        level = self.policy.level
        if level >= ThermalLevel.HOT:
            out.append(
                Finding(
                    "fail" if level == ThermalLevel.CRITICAL else "warn",
                    "temperature",
                    self.thermal_reason,
                    "give the box air: open the cupboard, add a heatsink or a fan",
                )
            )
        if self.disk_policy.state != "ok" and self.disk is not None:
            state, reason = self.disk_policy.classify(self.disk)
            out.append(
                Finding(
                    "fail" if state in ("missing", "read_only") else "warn",
                    "data-disk",
                    reason,
                    "reconnect the data disk (check its cable and power)"
                    if state == "missing"
                    else "free space or add a larger disk"
                    if state == "low_space"
                    else "run fsck on the disk, then remount it read-write",
                )
            )
        if self.smart_result is not None and self.smart_result.level != "ok":
            out.append(self.smart_result)
        out += [Finding("warn", "leds", e) for e in self.leds.errors.values()]
        return by_severity(out)

    def hardware(self) -> dict[str, Any]:
        """The dashboard's hardware section."""
        r = self.readings or Readings()
        th = r.throttled
        flags = {k: False for k in THROTTLE_FLAGS}
        now_mono = self.clock()
        sync = r.to_json().get("clock") or {"synced": None, "source": "none"}
        return {
            **r.to_json(),
            "clock": {
                **sync,
                "state": self.clock_policy.state,
                "reason": self.clock_policy.reason,
                "floor": self.clock_floor,
            },
            "cpu_temp_c": r.soc_temp_c,
            "thermal_level": self.policy.level.label,
            "thermal_reason": self.thermal_reason,
            "thresholds_c": {
                "warm": self.policy.cfg.warm_c,
                "hot": self.policy.cfg.hot_c,
                "critical": self.policy.cfg.critical_c,
                "hysteresis": self.policy.cfg.hysteresis_c,
            },
            "throttled": {
                "available": th is not None,
                "now": dict(th.now) if th else dict(flags),
                "since_boot": dict(th.since_boot) if th else dict(flags),
            },
            "power": {"under_voltage_now": r.under_voltage_now},
            "fan": {
                "configured": self.cfg.fan_pin >= 0,
                "present": self.fan is not None,
                "duty": self.fan.duty if self.fan else None,
                "curve_duty": self.policy.fan_duty,
                "rpm": r.fan_rpm,
                **({"pin": self.fan.pin, "backend": self.fan.gpio.name} if self.fan else {}),
            },
            "disks": [
                {
                    **(self.disk.to_json() if self.disk else {}),
                    "state": self.disk_policy.state,
                    "expected_mount": self.expected_mount,
                    "smart": self.smart.to_json() if self.smart else None,
                }
            ],
            "leds": {
                "pattern": self._pattern(now_mono),
                "on": self.leds.level,
                "identify_s_left": round(max(0.0, self._identify_until - now_mono), 1),
                "devices": [led.to_json() for led in self.leds.leds],
            },
            "limits": self.ctx.limits.to_json(),
            "polled_at": self.polled_at,
            "findings": [f.to_json() for f in self.findings()],
        }
