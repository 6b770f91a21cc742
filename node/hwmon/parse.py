"""Parsers for what the kernel, the firmware and smartctl print.

Every function takes text and either returns a typed value or raises :class:`SensorError` with a
one-line reason; none raises anything else, whatever the input (property-tested).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from node.hwmon.errors import SensorError

MIN_TEMP_C = -60.0
MAX_TEMP_C = 200.0

# Raspberry Pi firmware `get_throttled` bits (vcgencmd documentation).
THROTTLE_FLAGS: dict[str, int] = {
    "under_voltage": 0,
    "frequency_capped": 1,
    "throttled": 2,
    "soft_temp_limit": 3,
}
_SINCE_BOOT_SHIFT = 16


def parse_millidegrees(text: str) -> float:
    """A thermal zone or hwmon ``temp`` file: integer millidegrees Celsius -> degrees."""
    raw = text.strip()
    if not raw or len(raw) > 12:
        raise SensorError(f"not a temperature: {raw[:40]!r}")
    try:
        value = int(raw)
    except ValueError:
        raise SensorError(f"not a temperature: {raw[:40]!r}") from None
    celsius = value / 1000.0
    if not MIN_TEMP_C <= celsius <= MAX_TEMP_C:
        raise SensorError(f"temperature {celsius:.1f} C is outside {MIN_TEMP_C}..{MAX_TEMP_C}")
    return celsius


@dataclass(frozen=True, slots=True)
class Throttled:
    """Decoded ``get_throttled`` value."""

    raw: int
    now: dict[str, bool]
    since_boot: dict[str, bool]

    @classmethod
    def from_int(cls, value: int) -> Throttled:
        now = {name: bool(value >> bit & 1) for name, bit in THROTTLE_FLAGS.items()}
        since = {
            name: bool(value >> (bit + _SINCE_BOOT_SHIFT) & 1)
            for name, bit in THROTTLE_FLAGS.items()
        }
        return cls(value, now, since)

    def to_json(self) -> dict[str, Any]:
        return {"raw": hex(self.raw), "now": dict(self.now), "since_boot": dict(self.since_boot)}


def parse_throttled(text: str) -> Throttled:
    """``throttled=0x50005`` (vcgencmd) or ``50005`` (the sysfs file, hex without prefix)."""
    raw = text.strip()
    if raw.startswith("throttled="):
        raw = raw[len("throttled=") :]
    digits = raw[2:] if raw.lower().startswith("0x") else raw
    if not digits or len(digits) > 8 or any(c not in "0123456789abcdefABCDEF" for c in digits):
        raise SensorError(f"not a throttled value: {text.strip()[:40]!r}")
    return Throttled.from_int(int(digits, 16))


@dataclass(frozen=True, slots=True)
class DiskStat:
    """One line of /proc/diskstats (the counters we use)."""

    name: str
    reads: int
    sectors_read: int
    writes: int
    sectors_written: int
    in_flight: int
    io_ms: int


def parse_diskstats(text: str) -> dict[str, DiskStat]:
    """/proc/diskstats; malformed lines are skipped, so a partial file still gives the rest."""
    out: dict[str, DiskStat] = {}
    for line in text.splitlines()[:4096]:
        parts = line.split()
        if len(parts) < 14 or not all(p.isdigit() and p.isascii() for p in parts[3:14]):
            continue
        n = [int(p) for p in parts[3:14]]
        out[parts[2]] = DiskStat(parts[2], n[0], n[2], n[4], n[6], n[8], n[9])
    return out


def parse_block_stat(name: str, text: str) -> DiskStat:
    """/sys/block/<dev>/stat: the same counters as diskstats without the first three columns."""
    parts = text.split()
    if len(parts) < 11 or not all(p.isdigit() and p.isascii() for p in parts[:11]):
        raise SensorError(f"/sys/block/{name}/stat is not 11+ counters: {text.strip()[:60]!r}")
    n = [int(p) for p in parts[:11]]
    return DiskStat(name, n[0], n[2], n[4], n[6], n[8], n[9])


def parse_ioerr_cnt(text: str) -> int:
    """SCSI ``device/ioerr_cnt`` (hex, e.g. ``0x2``)."""
    raw = text.strip()
    try:
        value = int(raw, 16)
    except ValueError:
        raise SensorError(f"not an error count: {raw[:40]!r}") from None
    if value < 0 or value > 1 << 64:
        raise SensorError(f"error count out of range: {raw[:40]!r}")
    return value


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str
    options: tuple[str, ...]

    @property
    def read_only(self) -> bool:
        return "ro" in self.options


def _unescape_mount(text: str) -> str:
    # /proc/mounts escapes space, tab, newline and backslash as \ooo octal.
    out: list[str] = []
    i = 0
    while i < len(text):
        chunk = text[i + 1 : i + 4]
        if text[i] == "\\" and len(chunk) == 3 and all(c in "01234567" for c in chunk):
            out.append(chr(int(chunk, 8)))
            i += 4
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def parse_mounts(text: str) -> list[Mount]:
    """/proc/mounts (or /proc/self/mounts); malformed lines are skipped."""
    mounts: list[Mount] = []
    for line in text.splitlines()[:65536]:
        parts = line.split()
        if len(parts) < 4:
            continue
        device, mountpoint, fstype, options = parts[:4]
        mountpoint = _unescape_mount(mountpoint)
        if not mountpoint.startswith("/"):
            continue
        mounts.append(Mount(_unescape_mount(device), mountpoint, fstype, tuple(options.split(","))))
    return mounts


def parse_loadavg(text: str) -> tuple[float, float, float]:
    parts = text.split()
    try:
        loads = (float(parts[0]), float(parts[1]), float(parts[2]))
    except (IndexError, ValueError):
        raise SensorError(f"/proc/loadavg is not three numbers: {text.strip()[:60]!r}") from None
    if not all(math.isfinite(x) and x >= 0 for x in loads):
        raise SensorError(f"/proc/loadavg has invalid numbers: {text.strip()[:60]!r}")
    return loads


def parse_meminfo(text: str) -> dict[str, int]:
    """/proc/meminfo in bytes; requires MemTotal and MemAvailable."""
    out: dict[str, int] = {}
    for line in text.splitlines()[:1024]:
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts or not parts[0].isdigit() or not parts[0].isascii():
            continue
        scale = 1024 if len(parts) > 1 and parts[1] == "kB" else 1
        out[key.strip()] = int(parts[0]) * scale
    if "MemTotal" not in out or "MemAvailable" not in out or out["MemTotal"] == 0:
        raise SensorError("/proc/meminfo lacks MemTotal or MemAvailable")
    return out


def parse_led_trigger(text: str) -> tuple[str, tuple[str, ...]]:
    """A LED's ``trigger`` file: ``none [mmc0] timer`` -> (``mmc0``, all triggers)."""
    words = text.split()
    current = next((w[1:-1] for w in words if w.startswith("[") and w.endswith("]")), None)
    if current is None:
        raise SensorError(f"LED trigger file names no current trigger: {text.strip()[:60]!r}")
    return current, tuple(w.strip("[]") for w in words)


@dataclass(frozen=True, slots=True)
class SmartReport:
    """What ``smartctl --json -H -A`` says about one disk."""

    device: str
    passed: bool | None
    """Overall health self-assessment; None when the disk or its bridge gives none."""
    temperature_c: float | None = None
    reallocated_sectors: int | None = None
    pending_sectors: int | None = None
    media_errors: int | None = None
    exit_status: int = 0
    messages: tuple[str, ...] = field(default_factory=tuple)
    model: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "passed": self.passed,
            "temperature_c": self.temperature_c,
            "reallocated_sectors": self.reallocated_sectors,
            "pending_sectors": self.pending_sectors,
            "media_errors": self.media_errors,
            "exit_status": self.exit_status,
            "messages": list(self.messages),
            "model": self.model,
        }


def _get(doc: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(key)
    return doc


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 63:
        return value
    return None


def _attr_raw(doc: Any, attr_id: int) -> int | None:
    table = _get(doc, "ata_smart_attributes", "table")
    if not isinstance(table, list):
        return None
    for row in table[:256]:
        if isinstance(row, dict) and row.get("id") == attr_id:
            return _int_or_none(_get(row, "raw", "value"))
    return None


def parse_smartctl(device: str, text: str) -> SmartReport:
    """The JSON document of ``smartctl --json``; anything else is a :class:`SensorError`."""
    if len(text) > 4 << 20:
        raise SensorError(f"smartctl output for {device} is larger than 4 MiB")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        raise SensorError(f"smartctl printed no JSON for {device}: {text.strip()[:60]!r}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("smartctl"), dict):
        raise SensorError(f"smartctl output for {device} is not a smartctl JSON document")
    passed = _get(doc, "smart_status", "passed")
    temp = _get(doc, "temperature", "current")
    messages = _get(doc, "smartctl", "messages")
    texts = tuple(
        str(m["string"])[:200]
        for m in (messages if isinstance(messages, list) else [])[:32]
        if isinstance(m, dict) and isinstance(m.get("string"), str)
    )
    model = _get(doc, "model_name")
    exit_status = _int_or_none(_get(doc, "smartctl", "exit_status"))
    return SmartReport(
        device=device,
        passed=passed if isinstance(passed, bool) else None,
        temperature_c=float(temp)
        if isinstance(temp, int) and not isinstance(temp, bool) and -60 <= temp <= 200
        else None,
        reallocated_sectors=_attr_raw(doc, 5),
        pending_sectors=_attr_raw(doc, 197),
        media_errors=_int_or_none(_get(doc, "nvme_smart_health_information_log", "media_errors")),
        exit_status=exit_status if exit_status is not None else 0,
        messages=texts,
        model=model[:100] if isinstance(model, str) else "",
    )


def parse_default_route(text: str) -> bool:
    """/proc/net/route: is there an IPv4 default route that is up?"""
    for line in text.splitlines()[1:4096]:
        parts = line.split()
        if len(parts) < 4 or parts[1] != "00000000":
            continue
        try:
            flags = int(parts[3], 16)
        except ValueError:
            continue
        if flags & 0x1:  # RTF_UP
            return True
    return False
