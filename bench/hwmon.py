"""Cost and reaction time of hardware monitoring in a real agent.

Starts real agents (``bitchat-node run``) side by side in one run: one with the hwmon service
watching a fake Raspberry Pi 5 sysfs tree, one with hwmon watching this machine's own ``/``, and
one without the hwmon service. At idle it measures each process's CPU (psutil ``cpu_times``)
and wake-ups (context switches of all its threads from ``/proc/<pid>/task/*/status``), so the
difference is what monitoring costs. Then it writes an over-temperature reading into the fake
tree and times how long until the bandwidth cap appears in ``/api/status``.

Run: ``.venv/bin/python -m bench.hwmon [--seconds 60] [--samples 5]``
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from node.cli import init_data_dir

# Runs `bitchat-node run` with a subset of the services: "-a,b" drops services a and b,
# "=a" keeps only a, "=" keeps none.
CHILD = """
import sys
import node.agent as agent
mode, names = sys.argv[1][0], set(sys.argv[1][1:].split(",")) - {""}
build = agent.build_services
agent.build_services = lambda ctx: [s for s in build(ctx) if (s.name in names) == (mode == "=")]
from node.cli import main
main(sys.argv[2:])
"""


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def pi5_tree(root: Path) -> Path:
    """A sysfs/procfs tree laid out as on a Raspberry Pi 5 (what the monitor reads)."""
    write(root, "sys/class/thermal/thermal_zone0/type", "cpu-thermal\n")
    write(root, "sys/class/thermal/thermal_zone0/temp", "48150\n")
    write(root, "sys/devices/platform/soc/soc:firmware/get_throttled", "0\n")
    for name, trig in (("ACT", "mmc0"), ("PWR", "default-on")):
        write(root, f"sys/class/leds/{name}/trigger", f"none [{trig}] timer heartbeat\n")
        write(root, f"sys/class/leds/{name}/brightness", "0\n")
        write(root, f"sys/class/leds/{name}/max_brightness", "1\n")
    write(root, "sys/class/hwmon/hwmon0/name", "cpu_thermal\n")
    write(root, "sys/class/hwmon/hwmon0/temp1_input", "48150\n")
    write(root, "sys/class/hwmon/hwmon2/name", "rpi_volt\n")
    write(root, "sys/class/hwmon/hwmon2/in0_lcrit_alarm", "0\n")
    write(root, "sys/class/hwmon/hwmon3/name", "pwmfan\n")
    write(root, "sys/class/hwmon/hwmon3/fan1_input", "2987\n")
    for name in ("loadavg", "meminfo", "net/route"):
        write(root, f"proc/{name}", Path(f"/proc/{name}").read_text())
    write(root, "proc/mounts", Path("/proc/self/mounts").read_text())
    (root / "run/systemd/timesync").mkdir(parents=True, exist_ok=True)
    (root / "run/systemd/timesync/synchronized").touch()
    return root


def set_temp(root: Path, millideg: int) -> None:
    for rel in ("sys/class/thermal/thermal_zone0/temp", "sys/class/hwmon/hwmon0/temp1_input"):
        tmp = root / (rel + ".new")
        tmp.write_text(f"{millideg}\n")
        tmp.replace(root / rel)


@dataclass
class Agent:
    label: str
    proc: subprocess.Popen[str]
    web: str

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.web + "api/status", timeout=5) as resp:
            doc: dict[str, Any] = json.load(resp)
        return doc


def start(label: str, data_dir: Path, services: str, hwmon: dict[str, Any]) -> Agent:
    init_data_dir(data_dir)
    lines = ["[hwmon]"] + [f"{k} = {json.dumps(v)}" for k, v in hwmon.items()]
    (data_dir / "config.toml").write_text("\n".join(lines) + "\n")
    cmd = [
        sys.executable, "-c", CHILD, services, "run", "--data-dir", str(data_dir),
        "--listen", "127.0.0.1:0", "--web", "127.0.0.1:0",
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"agent {label} exited with {proc.wait()}")
        if m := re.match(r"dashboard: (\S+)", line.strip()):
            return Agent(label, proc, m.group(1))
        if "running, node id" in line and services.startswith("=") and "web" not in services:
            return Agent(label, proc, "")
    proc.kill()
    raise RuntimeError(f"agent {label} did not start")


def wakeups(pid: int) -> int:
    """Context switches (voluntary + involuntary) of every thread of ``pid`` so far."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        for key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
            m = re.search(rf"^{key}:\s+(\d+)", text, re.M)
            total += int(m.group(1)) if m else 0
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (psutil; clock-tick resolution)."""
    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def run_ns(pid: int) -> int:
    """Nanoseconds on a CPU of every thread (``/proc/<pid>/task/*/schedstat``, exact)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def sample(pid: int) -> tuple[float, int, int]:
    return cpu_seconds(pid), run_ns(pid), wakeups(pid)


def measure_idle(agents: list[Agent], seconds: float) -> dict[str, tuple[float, float, float]]:
    """Per agent: CPU % of a core (psutil), CPU % (schedstat), wake-ups per second."""
    before = {a.label: sample(a.proc.pid) for a in agents}
    t0 = time.monotonic()
    time.sleep(seconds)
    dt = time.monotonic() - t0
    out = {}
    for a in agents:
        cpu1, ns1, w1 = sample(a.proc.pid)
        cpu0, ns0, w0 = before[a.label]
        out[a.label] = (100.0 * (cpu1 - cpu0) / dt, 100.0 * (ns1 - ns0) / 1e9 / dt, (w1 - w0) / dt)
    return out


def wait_for(agent: Agent, capped: bool, timeout: float = 60.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        cap = agent.status()["limits"]["bandwidth_cap_bps"]
        if (cap is not None) == capped:
            return time.monotonic() - t0
        time.sleep(0.02)
    raise RuntimeError(f"bandwidth cap {'never appeared' if capped else 'never lifted'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=60.0, help="idle measurement window")
    ap.add_argument("--samples", type=int, default=5, help="over-temperature reactions to time")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-hwmon-"))
    root = pi5_tree(work / "pi5")
    agents: list[Agent] = []
    try:
        pi = {"sysfs_root": str(root), "leds": ["ACT", "PWR"], "cool_down_s": 0.0}
        agents = [
            start("hwmon on Pi 5 tree", work / "a", "-", pi),
            start("same, 1 s poll", work / "d", "-", {**pi, "poll_interval_s": 1.0}),
            start("hwmon on this host /", work / "b", "-", {"leds": []}),
            start("without hwmon", work / "c", "-hwmon", {}),
            start("only hwmon (Pi 5 tree)", work / "e", "=hwmon", pi),
            start("no services at all", work / "f", "=", {}),
        ]
        time.sleep(3.0)  # past start-up work
        idle = measure_idle(agents, args.seconds)
        print(f"idle for {args.seconds:g} s, poll interval 5 s (default); {os.cpu_count()} cores")
        print(f"{'agent':<26}{'CPU % (psutil)':>16}{'CPU % (schedstat)':>19}{'wake-ups/s':>12}")
        for label, (cpu, exact, wk) in idle.items():
            print(f"{label:<26}{cpu:>16.3f}{exact:>19.4f}{wk:>12.2f}")
        print("monitoring cost = difference to the agent without it (target: well under 1 %)")
        for label, peer in (
            ("hwmon on Pi 5 tree", "without hwmon"),
            ("same, 1 s poll", "without hwmon"),
            ("hwmon on this host /", "without hwmon"),
            ("only hwmon (Pi 5 tree)", "no services at all"),
        ):
            _, exact, wk = idle[label]
            _, base, base_wk = idle[peer]
            print(
                f"  {label} vs {peer}: {exact - base:+.4f} % of a core, "
                f"{wk - base_wk:+.2f} wake-ups/s"
            )
        print(f"over-temperature (80 C) -> bandwidth cap in /api/status, {args.samples} samples")
        rng = random.Random(1)
        for agent, interval in ((agents[0], 5.0), (agents[1], 1.0)):
            reactions = []
            for _ in range(args.samples):
                time.sleep(rng.uniform(0, interval))  # a random phase against the poll timer
                set_temp(root, 80000)
                reactions.append(wait_for(agent, True))
                set_temp(root, 40000)
                wait_for(agent, False)
            print(
                f"  poll {interval:g} s: min {min(reactions):.2f} s, "
                f"median {statistics.median(reactions):.2f} s, max {max(reactions):.2f} s"
            )
    finally:
        for a in agents:
            if a.proc.poll() is None:
                a.proc.terminate()
        for a in agents:
            try:
                a.proc.wait(10)
            except subprocess.TimeoutExpired:
                a.proc.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
