"""`bitchat-node doctor` through the CLI on a healthy and on a broken box."""

from __future__ import annotations

import importlib.util
import json
import stat
from pathlib import Path

from click.testing import CliRunner

from node import identity
from node.cli import main
from node.hwmon.doctor import _network, run_checks
from tests.hwmon.conftest import build_pi, write
from tests.hwmon.test_disks import usb_disk_tree
from tests.hwmon.test_parse import SMART_OK
from tests.support import RunningAgent


def fake_smartctl(tmp_path: Path, body: str) -> Path:
    tool = tmp_path / "bin" / "smartctl"
    tool.parent.mkdir(exist_ok=True)
    tool.write_text("#!/bin/sh\n" + body + "\n")
    tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return tool


def healthy_box(tmp_path: Path, data_dir: Path) -> Path:
    """A Pi 5 whose data dir is on a USB disk /dev/sda1 with a healthy SMART report."""
    root = build_pi(tmp_path / "root", 5)
    usb_disk_tree(root, data_dir)
    doc = tmp_path / "smart.json"
    doc.write_text(json.dumps({**SMART_OK, "ata_smart_attributes": {"table": []}}))
    tool = fake_smartctl(tmp_path, f"cat {doc}")
    node_id = identity.load(data_dir / "identity.key").node_id_text
    (data_dir / "storage-id").write_text(node_id + "\n")
    (data_dir / "config.toml").write_text(
        f'[hwmon]\nsmartctl = "{tool}"\n[network]\nlisten = "127.0.0.1:0"\n'
        '[web]\nlisten = "127.0.0.1:0"\n'
    )
    return root


def lines(output: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in output.splitlines()[:-1]:
        level, check, rest = line.split(None, 2)
        out.setdefault(check, []).append(f"{level} {rest}")
    return out


def test_healthy_box(tmp_path: Path, data_dir: Path) -> None:
    root = healthy_box(tmp_path, data_dir)
    result = CliRunner().invoke(
        main, ["doctor", "--data-dir", str(data_dir), "--sysfs-root", str(root)]
    )
    assert result.exit_code == 0, result.output
    got = lines(result.output)
    assert got["identity"][0].startswith("OK node id ")
    assert got["data-disk"] == [f"OK {data_dir} on /dev/sda at {data_dir} (ext4)"]
    assert got["verification"][0].startswith("OK ")
    assert got["smart"] == ["OK /dev/sda Samsung SSD 870 EVO 1TB SMART health passed, 31 C"]
    assert got["temperature"] == ["OK SoC at 48.1 C"]
    assert got["throttling"] == ["OK never throttled since boot"]
    assert got["power"] == ["OK supply voltage good since boot"]
    assert got["clock"] == ["OK clock synchronised (systemd-timesyncd)"]
    assert got["leds"] == ["OK board LED ACT present (trigger mmc0)"]
    assert [x.split()[0] for x in got["ports"]] == ["OK", "OK"]
    assert got["agent"][0].startswith("WARN the agent is not running")
    assert result.output.splitlines()[-1] == "doctor: passed with warnings"


def test_broken_box(tmp_path: Path, data_dir: Path) -> None:
    root = build_pi(tmp_path / "root", 4, temp_mc=91000, throttled="0x50005")
    write(root, "proc/self/mounts", "/dev/root / ext4 rw 0 0\n")
    write(root, "proc/loadavg", "garbage")
    (root / "run/systemd/timesync/synchronized").unlink()
    tool = fake_smartctl(tmp_path, "sleep 30")
    (data_dir / "config.toml").write_text(
        f'[hwmon]\nsmartctl = "{tool}"\nsmart_timeout_s = 0.3\ndata_mount = "/mnt/usb"\n'
        'fan_pin = 18\nleds = ["ACT", "led0"]\n'
    )
    (data_dir / "identity.key").chmod(0o644)
    result = CliRunner().invoke(
        main, ["doctor", "--json", "--data-dir", str(data_dir), "--sysfs-root", str(root)]
    )
    assert result.exit_code == 1, result.output
    doc = json.loads(result.output)
    assert doc["ok"] is False and doc["worst"] == "fail"
    got = {(f["level"], f["check"]): f for f in doc["findings"]}
    assert "chmod 600" in got["fail", "identity"]["action"]
    assert got["fail", "data-disk"]["message"] == (
        "data disk missing: nothing is mounted on /mnt/usb"
    )
    assert got["fail", "temperature"]["message"] == "SoC at 91.0 C, critical (>= 85)"
    assert got["fail", "power"]["message"] == "under-voltage now"
    assert got["warn", "throttling"]["message"] == "throttled now: throttled"
    assert "not synchronised" in got["warn", "clock"]["message"]
    assert "proc/loadavg" in got["warn", "load"]["message"]
    assert all(f["action"] for f in doc["findings"] if f["level"] == "fail")
    assert "board LED 'led0' unusable" in got["warn", "leds"]["message"]
    if importlib.util.find_spec("RPi") is None:
        assert got["warn", "gpio"]["message"] == (
            "fan GPIO 18 configured but the RPi.GPIO API is missing"
        )
        assert "rpi-lgpio" in got["warn", "gpio"]["action"]


def test_hanging_and_nonsense_smartctl(tmp_path: Path, data_dir: Path) -> None:
    root = healthy_box(tmp_path, data_dir)
    fake_smartctl(tmp_path, "sleep 30")
    findings = run_checks(data_dir, root, smart_timeout=0.3)
    smart = [f for f in findings if f.check == "smart"]
    assert [f.level for f in smart] == ["warn"]
    assert "did not answer for /dev/sda within 0.3 s" in smart[0].message
    fake_smartctl(tmp_path, "echo '<html>oops</html>'")
    smart = [f for f in run_checks(data_dir, root) if f.check == "smart"]
    assert smart[0].level == "warn" and "smartctl printed no JSON" in smart[0].message


def test_missing_data_dir_and_bad_config(tmp_path: Path, data_dir: Path) -> None:
    result = CliRunner().invoke(main, ["doctor", "--data-dir", str(tmp_path / "nope")])
    assert result.exit_code == 1
    assert "bitchat-node init --data-dir" in result.output
    (data_dir / "config.toml").write_text("[hwmon]\nwarm_c = 90\n")
    findings = run_checks(data_dir, tmp_path / "empty-root")
    bad = [f for f in findings if f.check == "config"]
    assert bad[0].level == "fail" and "thresholds must rise" in bad[0].message


def test_doctor_with_a_running_agent(agent: RunningAgent, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main, ["doctor", "--data-dir", str(agent.data_dir), "--sysfs-root", str(tmp_path)]
    )
    got = lines(result.output)
    assert got["ports"] == [
        f"OK held by our agent (pid {agent.process.pid}): listen {agent.udp[0]}:{agent.udp[1]}, "
        f"web {agent.web}"
    ]
    assert got["agent"][0].startswith("OK agent 0.1.0 running")
    assert set(got) >= {"nat", "dht", "relay"}


def test_doctor_help() -> None:
    result = CliRunner().invoke(main, ["doctor", "--help"])
    assert result.exit_code == 0 and "--sysfs-root" in result.output and "--json" in result.output


def test_network_findings_from_the_agent_documents() -> None:
    status = {"services": {"transport": {"sessions": 3}, "relays": {"online": 1, "enrolled": 2}}}
    net = {"nat": {"class": "full_cone", "public_address": "198.18.0.5:7700",
                   "port_mapping": "upnp"}, "sessions": 3}  # fmt: skip
    got = {f.check: (f.level, f.message) for f in _network(status, net)}
    assert got == {
        "nat": ("ok", "NAT class full_cone, reachable at 198.18.0.5:7700 (port mapping: upnp)"),
        "dht": ("ok", "3 peer sessions (no DHT table reported)"),
        "relay": ("ok", "1 of 2 enrolled relays online"),
    }
    lonely = {"services": {"overlay": {"dht_peers": 0}}}
    got = {f.check: f for f in _network(lonely, {"nat": {"class": "symmetric"}})}
    assert got["nat"].level == "warn" and "only via relays" in got["nat"].message
    assert got["dht"].level == "warn" and "bootstrap" in got["dht"].action
    got = {f.check: f for f in _network({"services": "garbage"}, None)}
    assert got["nat"].level == "warn" and got["dht"].message == "the agent reports no peer count"
