"""Fake sysfs/procfs trees laid out as on a real Raspberry Pi 4 and Pi 5, and a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from node import config, identity, state
from node.agent import AgentContext
from node.events import EventLog

MEMINFO = """MemTotal:        3884356 kB
MemFree:         2718064 kB
MemAvailable:    3398920 kB
Buffers:           46412 kB
Cached:           703948 kB
"""
DISKSTATS = """ 179       0 mmcblk0 9338 3469 714546 27592 2380 1891 96074 9476 0 29136 38684 0 0 0
 179       1 mmcblk0p1 143 228 9602 430 2 0 2 2 0 392 432 0 0 0 0 0 0
   8       0 sda 1203 12 93254 3321 77 51 1024 412 0 2904 3733 0 0 0 0 0 0
   8       1 sda1 1100 12 90000 3200 77 51 1024 412 0 2800 3612 0 0 0 0 0 0
"""
ROUTE = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
eth0\t00000000\t0101A8C0\t0003\t0\t0\t202\t00000000\t0\t0\t0
eth0\t0001A8C0\t00000000\t0001\t0\t0\t202\t00FFFFFF\t0\t0\t0
"""


class FakeClock:
    """A clock the test steps by hand."""

    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def led(root: Path, name: str, trigger: str, triggers: str = "none timer heartbeat mmc0") -> Path:
    names = triggers.split() + ([] if trigger in triggers.split() else [trigger])
    shown = " ".join(f"[{t}]" if t == trigger else t for t in names)
    base = f"sys/class/leds/{name}"
    write(root, f"{base}/trigger", shown + "\n")
    write(root, f"{base}/brightness", "0\n")
    write(root, f"{base}/max_brightness", "255\n" if name == "PWR" else "1\n")
    return root / base


def build_pi(root: Path, model: int, *, temp_mc: int = 48150, throttled: str = "0") -> Path:
    """A tree as a Raspberry Pi ``model`` (4 or 5) running Raspberry Pi OS lays it out."""
    write(root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(root, "sys/class/thermal/thermal_zone0/temp", f"{temp_mc}\n")
    write(root, "sys/devices/platform/soc/soc:firmware/get_throttled", f"{throttled}\n")
    led(root, "ACT", "mmc0")
    led(root, "PWR", "default-on", "none default-on timer")
    if model == 4:
        write(root, "sys/class/hwmon/hwmon0/name", "cpu_thermal\n")
        write(root, "sys/class/hwmon/hwmon0/temp1_input", f"{temp_mc}\n")
        write(root, "sys/class/hwmon/hwmon1/name", "rpi_volt\n")
        write(root, "sys/class/hwmon/hwmon1/in0_lcrit_alarm", "0\n")
    else:
        write(root, "sys/class/hwmon/hwmon0/name", "cpu_thermal\n")
        write(root, "sys/class/hwmon/hwmon0/temp1_input", f"{temp_mc}\n")
        write(root, "sys/class/hwmon/hwmon1/name", "rp1_adc\n")
        write(root, "sys/class/hwmon/hwmon1/temp1_input", "51234\n")
        write(root, "sys/class/hwmon/hwmon2/name", "rpi_volt\n")
        write(root, "sys/class/hwmon/hwmon2/in0_lcrit_alarm", "0\n")
        write(root, "sys/class/hwmon/hwmon3/name", "pwmfan\n")
        write(root, "sys/class/hwmon/hwmon3/fan1_input", "2987\n")
        write(root, "sys/class/hwmon/hwmon3/pwm1", "75\n")
    write(root, "proc/loadavg", "0.08 0.12 0.10 1/213 4242\n")
    write(root, "proc/meminfo", MEMINFO)
    write(root, "proc/diskstats", DISKSTATS)
    write(root, "proc/net/route", ROUTE)
    (root / "run/systemd/timesync").mkdir(parents=True, exist_ok=True)
    write(root, "run/systemd/timesync/synchronized", "")
    return root


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=[4, 5], ids=["pi4", "pi5"])
def pi_root(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    return build_pi(tmp_path / f"pi{request.param}", request.param)


def make_ctx(data_dir: Path, state_dir: Path, **hwmon: object) -> AgentContext:
    """A real agent context (identity, state.db, events, limits) with ``[hwmon]`` overrides."""
    state_dir.mkdir(parents=True, exist_ok=True)
    cfg = config.override(config.Config(), "hwmon", **hwmon) if hwmon else config.Config()
    db = state.open_state(state_dir / state.STATE_FILE)
    return AgentContext(data_dir, cfg, identity.Identity.generate(), db, EventLog())
