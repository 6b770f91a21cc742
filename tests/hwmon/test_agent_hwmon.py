"""A real agent process watching a fake Pi 5 tree: heat to bandwidth cap, identify, LED restore."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.hwmon.conftest import build_pi, write
from tests.support import RunningAgent, start_agent


def get(agent: RunningAgent, path: str) -> Any:
    with urllib.request.urlopen(agent.web + path, timeout=5) as resp:
        return json.load(resp)


def until(what: str, cond: Callable[[], bool], limit: float = 30.0) -> None:
    """Wait for a condition the agent must reach (the limit only bounds a hung test)."""
    deadline = time.monotonic() + limit
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"the agent never reached: {what}")
        time.sleep(0.05)


def set_temp(root: Path, mc: int) -> None:
    write(root, "sys/class/thermal/thermal_zone0/temp", f"{mc}\n")
    write(root, "sys/class/hwmon/hwmon0/temp1_input", f"{mc}\n")


def test_agent_caps_bandwidth_when_hot_and_gives_leds_back(data_dir: Path, tmp_path: Path) -> None:
    root = build_pi(tmp_path / "root", 5)
    (data_dir / "config.toml").write_text(
        f'[hwmon]\nsysfs_root = "{root}"\nleds = ["ACT", "PWR"]\npoll_interval_s = 0.2\n'
        "cool_down_s = 0.0\n"
    )
    agent = start_agent(data_dir)
    try:
        until("a first poll", lambda: get(agent, "api/status")["services"]["hwmon"]["polls"] > 0)
        assert (root / "sys/class/leds/ACT/trigger").read_text() == "none"
        assert get(agent, "api/status")["limits"]["bandwidth_cap_bps"] is None

        set_temp(root, 80000)
        until("the bandwidth cap", lambda: get(agent, "api/status")["limits"]["bandwidth_cap_bps"])
        status = get(agent, "api/status")
        assert status["limits"]["bandwidth_cap_bps"] == 2_000_000
        assert status["limits"]["refuse_uploads"] and not status["limits"]["refuse_audits"]
        hw = get(agent, "api/hardware")
        assert hw["thermal_level"] == "hot" and hw["cpu_temp_c"] == 80.0
        assert hw["leds"]["pattern"] == "overheating"
        assert {"level": "warn", "check": "temperature"}.items() <= hw["findings"][0].items()

        set_temp(root, 40000)
        until("the cap lifted", lambda: not get(agent, "api/status")["limits"]["reasons"])

        # A lone agent with no peers yet shows "joining"; identify must give that back.
        before = get(agent, "api/hardware")["leds"]["pattern"]
        assert before in ("healthy", "joining")
        token = (data_dir / "admin.token").read_text().strip()
        req = urllib.request.Request(
            agent.web + "api/actions/identify", data=b'{"seconds": 1}', method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 202
        assert get(agent, "api/hardware")["leds"]["pattern"] == "identify"
        until("identify over", lambda: get(agent, "api/hardware")["leds"]["pattern"] == before)
        assert agent.stop() == 0
        assert (root / "sys/class/leds/ACT/trigger").read_text() == "mmc0"
        assert (root / "sys/class/leds/PWR/trigger").read_text() == "default-on"
    finally:
        if agent.process.poll() is None:
            agent.stop()
