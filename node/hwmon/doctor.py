"""``bitchat-node doctor``: check everything a box needs and say what to do about each problem.

Each check is a function returning findings; :func:`run_checks` runs them all, whatever fails,
so one broken thing never hides another. The checks read the same sysfs/procfs tree as the
monitor (``sysfs_root``), and ask a running agent (found through ``DATA_DIR/agent.json``) for
what only it knows: NAT class, DHT peers and relays.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.util
import json
import os
import socket
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node import config, identity
from node.errors import NodeError
from node.hwmon.clock import ACTION, clock_floor, far_off
from node.hwmon.disks import DiskReading, LinuxDiskProbe, data_disk_dir
from node.hwmon.errors import SensorError
from node.hwmon.findings import Finding, worst
from node.hwmon.gpio import INSTALL_HINT
from node.hwmon.parse import parse_led_trigger
from node.hwmon.sensors import LinuxSensors, Readings, read_all
from node.hwmon.smart import read_smart, smart_finding
from node.hwmon.thermal import ThermalConfig

_GIB = 1 << 30
_NAT_KEYS = ("nat_class", "nat_type", "nat")
_PEER_KEYS = ("dht_peers", "routing_table_peers")
_POWER_FIX = "use the official power supply and a short, thick cable"


@dataclass
class Box:
    """What the checks share: where the box lives and what was read so far."""

    data_dir: Path
    root: Path
    cfg: config.Config = field(default_factory=config.Config)
    config_ok: bool = True
    readings: Readings | None = None
    disk: DiskReading | None = None
    agent: dict[str, Any] | None = None
    """The running agent's /api/status document, when it runs and answers."""
    agent_note: str = ""
    smart_timeout: float | None = None


def check_identity(box: Box) -> Iterator[Finding]:
    d = box.data_dir
    if not d.is_dir():
        yield Finding(
            "fail", "identity", f"data dir {d} does not exist",
            f"run `bitchat-node init --data-dir {d}`",
        )  # fmt: skip
        return
    mode = stat.S_IMODE(d.stat().st_mode)
    if mode & 0o002:
        yield Finding("fail", "permissions", f"data dir {d} is world-writable (mode {mode:o})",
                      f"chmod 700 {d}")  # fmt: skip
    elif not os.access(d, os.R_OK | os.W_OK | os.X_OK):
        yield Finding("fail", "permissions", f"data dir {d} is not writable by uid {os.getuid()}",
                      f"chown the data dir to the agent's user: chown -R $USER {d}")  # fmt: skip
    else:
        yield Finding("ok", "permissions", f"data dir {d} (mode {mode:o}) is writable")
    key = d / identity.KEY_FILE
    try:
        ident = identity.load(key, check_mode=False)
        kmode = stat.S_IMODE(key.stat().st_mode)
    except NodeError as exc:
        yield Finding("fail", "identity", str(exc), "restore identity.key from a backup, or init")
        return
    except OSError as exc:
        yield Finding("fail", "identity", f"cannot read {key}: {exc.strerror}",
                      "run doctor as the agent's user or as root")  # fmt: skip
        return
    if kmode & 0o077:
        yield Finding("fail", "identity", f"{key} is readable by others (mode {kmode:o})",
                      f"chmod 600 {key}")  # fmt: skip
    else:
        yield Finding("ok", "identity", f"node id {ident.node_id_text}, key mode {kmode:o}")


def check_config(box: Box) -> Iterator[Finding]:
    path = box.data_dir / config.CONFIG_FILE
    try:
        box.cfg = config.load(path)
        ThermalConfig.from_section(box.cfg.hwmon)
    except NodeError as exc:
        box.config_ok = False
        yield Finding("fail", "config", str(exc), f"fix {path} (or delete it for the defaults)")
        return
    where = str(path) if path.exists() else f"defaults ({path} absent)"
    yield Finding("ok", "config", f"config valid: {where}")


def check_data_disk(box: Box) -> Iterator[Finding]:
    target = data_disk_dir(box.cfg, box.data_dir)
    expected = box.cfg.hwmon.data_mount or None
    box.disk = r = LinuxDiskProbe(box.root).probe(target, expected)
    if not r.present:
        yield Finding("fail", "data-disk", f"data disk missing: {r.problem}",
                      "plug in and mount the data disk (check its cable and power)")  # fmt: skip
        return
    if r.read_only:
        yield Finding("fail", "data-disk", f"{r.device} at {r.mountpoint} is mounted read-only",
                      f"see dmesg, run fsck on {r.device}, remount it rw")  # fmt: skip
    elif r.on_root_fs:
        yield Finding(
            "warn", "data-disk",
            f"{target} is on the root filesystem ({r.device}), which on a Pi is the SD card",
            "mount a USB disk and point [storage] path (and [hwmon] data_mount) at it",
        )  # fmt: skip
    else:
        yield Finding("ok", "data-disk", f"{target} on {r.device} at {r.mountpoint} ({r.fstype})")
    if r.io_errors:
        yield Finding("warn", "data-disk", f"{r.io_errors} I/O errors on {r.device} since boot",
                      "check the cable and the disk's SMART health")  # fmt: skip
    yield from _verification(box, target)
    pct, free = r.free_percent, r.free_bytes
    if pct is None or free is None:
        return
    low = box.cfg.hwmon.low_space_percent
    text = f"{pct:.1f} % free ({free / _GIB:.1f} GiB of {(r.total_bytes or 0) / _GIB:.1f} GiB)"
    if pct < low:
        yield Finding("fail", "free-space", text + f", below {low:g} %: uploads are refused",
                      "free space or add a larger disk")  # fmt: skip
    elif pct < 2 * low:
        yield Finding("warn", "free-space", text, "plan for more space soon")
    else:
        yield Finding("ok", "free-space", text)


def _verification(box: Box, target: Path) -> Iterator[Finding]:
    try:
        from node.storage_agent.store import VERIFY_FILE
    except ImportError:
        return
    path = target / VERIFY_FILE
    try:
        text = path.read_text(errors="replace")[:200].strip()
    except FileNotFoundError:
        yield Finding(
            "warn", "verification",
            f"{path} not found: this disk has not been claimed by this node yet",
            "start the agent once so that it claims a fresh disk, or mount the right disk",
        )  # fmt: skip
        return
    except OSError as exc:
        yield Finding("fail", "verification", f"{path}: {exc.strerror}", "check the disk")
        return
    try:
        node_id = identity.load(box.data_dir / identity.KEY_FILE, check_mode=False).node_id_text
    except NodeError:
        node_id = ""
    if node_id and text != node_id:
        yield Finding("fail", "verification",
                      f"the data disk belongs to another node ({text[:16]}…)",
                      "mount this node's own data disk")  # fmt: skip
    else:
        yield Finding("ok", "verification", f"{path} names this node")


def check_smart(box: Box) -> Iterator[Finding]:
    r = box.disk
    if r is None or not r.present or not (r.device or "").startswith("/dev/"):
        yield Finding("warn", "smart", "no block device for the data disk; SMART not checked")
        return
    timeout = box.smart_timeout or box.cfg.hwmon.smart_timeout_s
    try:
        report = asyncio.run(read_smart(box.cfg.hwmon.smartctl, str(r.device), timeout))
    except SensorError as exc:
        yield Finding("warn", "smart", str(exc), "check the disk and its USB bridge")
        return
    yield smart_finding(report)


def check_sensors(box: Box) -> Iterator[Finding]:
    box.readings = r = read_all(LinuxSensors(box.root))
    yield from r.findings
    th = ThermalConfig.from_section(box.cfg.hwmon) if box.config_ok else ThermalConfig()
    t = r.soc_temp_c
    if t is None:
        if not any(f.check == "temperature" for f in r.findings):
            yield Finding(
                "warn",
                "temperature",
                "no temperature sensor found",
                "load the board's thermal driver; without it heat cannot be managed",
            )
    elif t >= th.critical_c:
        yield Finding("fail", "temperature", f"SoC at {t:.1f} C, critical (>= {th.critical_c:g})",
                      "shut down and cool the box: air, heatsink, fan")  # fmt: skip
    elif t >= th.hot_c:
        yield Finding("warn", "temperature", f"SoC at {t:.1f} C, hot (>= {th.hot_c:g}): work cut",
                      "give the box air: open the cupboard, add a heatsink or a fan")  # fmt: skip
    else:
        yield Finding("ok", "temperature", f"SoC at {t:.1f} C")
    th_flags = r.throttled
    if th_flags is None:
        if r.under_voltage_alarm is None:
            yield Finding("ok", "throttling", "no firmware throttle flags (not a Raspberry Pi)")
    else:
        now = [k for k, v in th_flags.now.items() if v and k != "under_voltage"]
        past = [k for k, v in th_flags.since_boot.items() if v and k != "under_voltage"]
        if now:
            yield Finding("warn", "throttling", f"throttled now: {', '.join(now)}",
                          "cool the box; throttling slows every proof and transfer")  # fmt: skip
        elif past:
            yield Finding("warn", "throttling", f"throttled since boot: {', '.join(past)}",
                          "the box ran hot at some point; improve its cooling")  # fmt: skip
        else:
            yield Finding("ok", "throttling", "never throttled since boot")
    if r.under_voltage_now:
        yield Finding("fail", "power", "under-voltage now", _POWER_FIX)
    elif th_flags is not None and th_flags.since_boot["under_voltage"]:
        yield Finding("warn", "power", "under-voltage happened since boot", _POWER_FIX)
    elif th_flags is not None or r.under_voltage_alarm is not None:
        yield Finding("ok", "power", "supply voltage good since boot")
    c = r.clock
    far = far_off(c, time.time(), clock_floor(box.root))
    if far is not None:
        yield Finding("fail", "clock", f"{far}: the agent refuses to mine until it is", ACTION)
    elif c is not None and c.synced:
        yield Finding("ok", "clock", f"clock synchronised ({c.source})")
    elif c is not None and c.synced is False:
        yield Finding(
            "warn",
            "clock",
            f"clock not synchronised ({c.source})",
            "enable NTP: timedatectl set-ntp true; contracts and vouchers carry times",
        )
    else:
        yield Finding("warn", "clock", "cannot tell whether the clock is synchronised",
                      "run systemd-timesyncd or chrony")  # fmt: skip


def check_devices(box: Box) -> Iterator[Finding]:
    """The LEDs, fan and GPIO library the config asks for (looked at, never driven)."""
    hw = box.cfg.hwmon
    for name in hw.leds:
        base = box.root / "sys/class/leds" / name
        try:
            trigger, _ = parse_led_trigger((base / "trigger").read_text(errors="replace")[:4096])
        except (OSError, SensorError) as exc:
            yield Finding(
                "warn", "leds", f"board LED {name!r} unusable at {base}: {exc}",
                "set [hwmon] leds to the LEDs this board has, or [] for none",
            )  # fmt: skip
            continue
        yield Finding("ok", "leds", f"board LED {name} present (trigger {trigger})")
    if hw.fan_pin >= 0 or hw.led_pin >= 0:
        pins = ", ".join(f"{what} GPIO {pin}" for what, pin in
                         (("fan", hw.fan_pin), ("LED", hw.led_pin)) if pin >= 0)  # fmt: skip
        if importlib.util.find_spec("RPi") is None:
            yield Finding("warn", "gpio", f"{pins} configured but the RPi.GPIO API is missing",
                          INSTALL_HINT)  # fmt: skip
        else:
            yield Finding("ok", "gpio", f"{pins} via the RPi.GPIO API")


def _bind_free(kind: int, hostport: str) -> str | None:
    """None when ``hostport`` can be bound now, else why not."""
    host, port = config.parse_hostport(hostport)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        if kind == socket.SOCK_STREAM:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "held by another process"
            return exc.strerror or str(exc)
    return None


def check_agent(box: Box) -> Iterator[Finding]:
    from node.agent import read_runtime

    runtime = read_runtime(box.data_dir)
    net, web = box.cfg.network.listen, box.cfg.web.listen
    if runtime is None:
        for label, kind, addr, key in (
            ("UDP", socket.SOCK_DGRAM, net, "[network] listen"),
            ("web", socket.SOCK_STREAM, web, "[web] listen"),
        ):
            why = _bind_free(kind, addr)
            if why is None:
                yield Finding("ok", "ports", f"{label} {addr} is free for the agent")
            else:
                yield Finding("fail", "ports", f"{label} {addr}: {why}",
                              f"stop what holds it (ss -lunpt) or change {key}")  # fmt: skip
        yield Finding(
            "warn", "agent", f"the agent is not running on {box.data_dir}",
            "start it: systemctl start bitchat-node (NAT, DHT and relay checks need it)",
        )  # fmt: skip
        return
    pid = runtime.get("pid")
    held = ", ".join(f"{k} {runtime[k]}" for k in ("listen", "web") if k in runtime)
    yield Finding("ok", "ports", f"held by our agent (pid {pid}): {held}")
    url = str(runtime.get("web", "")).rstrip("/") + "/api/status"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.loads(resp.read(1 << 20))
        if not isinstance(doc, dict):
            raise ValueError("not an object")
    except (OSError, ValueError, urllib.error.URLError) as exc:
        yield Finding("fail", "agent", f"agent pid {pid} does not answer on {url}: {exc}",
                      "look at its log: journalctl -u bitchat-node")  # fmt: skip
        return
    box.agent = doc
    yield Finding("ok", "agent", f"agent {doc.get('version')} running, up {doc.get('uptime_s')} s")
    yield from _network(doc, _fetch(str(runtime.get("web", "")).rstrip("/") + "/api/network"))


def _find(doc: Any, keys: tuple[str, ...], depth: int = 0) -> Any:
    """The first value under one of ``keys`` anywhere in ``doc`` (services nest it)."""
    if depth > 4 or not isinstance(doc, dict):
        return None
    for key in keys:
        if key in doc and doc[key] is not None and not isinstance(doc[key], dict | list):
            return doc[key]
    for value in doc.values():
        found = _find(value, keys, depth + 1)
        if found is not None:
            return found
    return None


def _fetch(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            doc = json.loads(resp.read(1 << 20))
    except (OSError, ValueError, urllib.error.URLError):
        return None
    return doc if isinstance(doc, dict) else None


def _network(doc: dict[str, Any], net: dict[str, Any] | None) -> Iterator[Finding]:
    """NAT class, reachability, peers and relays from ``/api/status`` and ``/api/network``."""
    services = doc.get("services") if isinstance(doc.get("services"), dict) else {}
    nat_doc = (net or {}).get("nat")
    nat_doc = nat_doc if isinstance(nat_doc, dict) else {}
    nat = nat_doc.get("class") or _find(services, _NAT_KEYS)
    public, mapping = nat_doc.get("public_address"), nat_doc.get("port_mapping")
    if nat is None:
        yield Finding(
            "warn", "nat", "the agent reports no NAT class yet",
            "wait for NAT discovery, or check that [network] bootstrap is set",
        )  # fmt: skip
    elif str(nat).lower() in ("symmetric", "blocked", "udp_blocked"):
        yield Finding("warn", "nat", f"NAT class {nat}: peers reach this box only via relays",
                      "enable UPnP/NAT-PMP on the router or forward the UDP port")  # fmt: skip
    else:
        seen = f", reachable at {public}" if public else ""
        via = f" (port mapping: {mapping})" if mapping else ""
        yield Finding("ok", "nat", f"NAT class {nat}{seen}{via}")
    peers, what = _find(services, _PEER_KEYS), "DHT peers"
    if peers is None and isinstance((net or {}).get("sessions"), int):
        peers, what = (net or {})["sessions"], "peer sessions (no DHT table reported)"
    if not isinstance(peers, int) or isinstance(peers, bool):
        yield Finding("warn", "dht", "the agent reports no peer count")
    elif peers == 0:
        yield Finding("warn", "dht", "no peers: the box has not joined the network",
                      "check internet access and [network] bootstrap")  # fmt: skip
    else:
        yield Finding("ok", "dht", f"{peers} {what}")
    relays = services.get("relays") if isinstance(services, dict) else None
    if isinstance(relays, dict):
        if relays.get("error"):
            yield Finding("warn", "relay", f"relays: {relays['error']}")
        else:
            online, enrolled = relays.get("online"), relays.get("enrolled")
            yield Finding("ok", "relay", f"{online} of {enrolled} enrolled relays online")
    else:
        yield Finding("ok", "relay", "no relay service in this agent")


CHECKS: tuple[Callable[[Box], Iterator[Finding]], ...] = (
    check_identity,
    check_config,
    check_data_disk,
    check_smart,
    check_sensors,
    check_devices,
    check_agent,
)


def run_checks(
    data_dir: Path, sysfs_root: Path | None = None, *, smart_timeout: float | None = None
) -> list[Finding]:
    """Every check, in order; a check that crashes becomes a failing finding of its own."""
    box = Box(data_dir, sysfs_root or Path("/"), smart_timeout=smart_timeout)
    findings: list[Finding] = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            findings.extend(check(box))
        except Exception as exc:
            findings.append(
                Finding("fail", name, f"the {name} check itself failed: {type(exc).__name__}: "
                        f"{exc}", "report this as a bug with the output of doctor --json")
            )  # fmt: skip
        if name == "config" and sysfs_root is None:
            box.root = Path(box.cfg.hwmon.sysfs_root)
    return findings


def render(findings: list[Finding]) -> str:
    """One line per check: level, check, what was found and what to do."""
    width = max((len(f.check) for f in findings), default=8)
    lines = []
    for f in findings:
        line = f"{f.level.upper():<4}  {f.check:<{width}}  {f.message}"
        if f.action and f.level != "ok":
            line += f" -> {f.action}"
        lines.append(line)
    verdict = worst(findings)
    summary = {"ok": "all checks passed", "warn": "passed with warnings", "fail": "FAILED"}
    lines.append(f"doctor: {summary[verdict]}")
    return "\n".join(lines)


def to_json(findings: list[Finding]) -> dict[str, Any]:
    return {"ok": worst(findings) != "fail", "worst": worst(findings),
            "findings": [f.to_json() for f in findings]}  # fmt: skip
