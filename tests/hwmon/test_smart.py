"""smartctl: the real tool, and fake ones on PATH that hang, print nonsense or report failure."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from node.hwmon.disks import FakeDiskProbe
from node.hwmon.errors import SensorError
from node.hwmon.parse import SmartReport
from node.hwmon.sensors import FakeSensors
from node.hwmon.service import SMART_FIRST_DELAY, HwmonService
from node.hwmon.smart import read_smart, smart_finding
from tests.hwmon.conftest import FakeClock, make_ctx
from tests.hwmon.test_parse import SMART_OK
from tests.support import require_binary


def fake_tool(tmp_path: Path, body: str) -> str:
    path = tmp_path / "bin" / "smartctl"
    path.parent.mkdir(exist_ok=True)
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_hanging_smartctl_is_killed_and_reported(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    tool = fake_tool(tmp_path, f"echo $$ > {pidfile}\nexec sleep 30")
    with pytest.raises(SensorError, match=r"did not answer for /dev/sda within 0\.3 s"):
        await read_smart(tool, "/dev/sda", 0.3)
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):  # the whole process group is gone
        os.kill(pid, 0)


async def test_nonsense_output(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, "echo 'smartctl: Segmentation fault'; exit 139")
    with pytest.raises(SensorError, match="smartctl printed no JSON"):
        await read_smart(tool, "/dev/sda", 5)


async def test_missing_tool() -> None:
    with pytest.raises(SensorError, match="install Debian package smartmontools"):
        await read_smart("/nonexistent/smartctl", "/dev/sda", 5)


async def test_arguments_and_healthy_report(tmp_path: Path) -> None:
    out = tmp_path / "doc.json"
    out.write_text(json.dumps(SMART_OK))
    args = tmp_path / "args"
    tool = fake_tool(tmp_path, f'echo "$@" > {args}\ncat {out}')
    report = await read_smart(tool, "/dev/sda", 5)
    assert args.read_text().split() == ["--json", "-H", "-A", "-i", "/dev/sda"]
    finding = smart_finding(report)
    assert finding.level == "warn" and "pending sectors 2" in finding.message


async def test_real_smartctl_on_a_device_without_smart() -> None:
    tool = require_binary("smartctl", "smartmontools")
    report = await read_smart(tool, "/dev/null", 20)
    finding = smart_finding(report)
    assert report.passed is None and report.exit_status != 0
    assert finding.level == "warn" and "no SMART health for /dev/null" in finding.message


def test_findings() -> None:
    failing = SmartReport("/dev/sda", False, model="WD Blue")
    assert smart_finding(failing).level == "fail"
    assert smart_finding(SmartReport("/dev/sda", True, exit_status=8)).level == "fail"
    ok = smart_finding(SmartReport("/dev/sda", True, temperature_c=33, model="X"))
    assert ok.level == "ok" and ok.message == "/dev/sda X SMART health passed, 33 C"


async def test_service_runs_smart_rarely_and_reports_a_hang(tmp_path: Path) -> None:
    tool = fake_tool(tmp_path, f"echo run >> {tmp_path / 'runs'}\nexec sleep 30")
    clock = FakeClock()
    ctx = make_ctx(
        tmp_path / "data", tmp_path / "state",
        leds=[], smartctl=tool, smart_timeout_s=0.2, smart_interval_s=3600.0,
    )  # fmt: skip
    svc = HwmonService(ctx, sensors=FakeSensors(clock), disk_probe=FakeDiskProbe(), clock=clock)
    await svc.poll()
    assert svc._smart_task is None  # not in the first minutes after start
    clock.advance(SMART_FIRST_DELAY)
    await svc.poll()
    assert svc._smart_task is not None
    await svc._smart_task
    assert svc.smart_result is not None and svc.smart_result.level == "warn"
    assert "did not answer for /dev/sda within 0.2 s" in svc.smart_result.message
    assert any(f.check == "smart" for f in svc.findings())
    assert "did not answer" in ctx.events.recent(1)[0].message
    clock.advance(1800)
    await svc.poll()
    assert svc._smart_task.done()  # not again before smart_interval_s
    assert (tmp_path / "runs").read_text().count("run") == 1
