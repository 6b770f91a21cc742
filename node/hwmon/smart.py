"""SMART health of the data disk through ``smartctl --json`` (smartmontools).

smartctl runs at idle I/O priority in its own process group, with a timeout after which the
whole group is killed: a hung USB bridge must not hang the agent. Everything it can say, or fail
to say, ends as a :class:`Finding`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal

from node.hwmon.disks import set_idle_io_priority
from node.hwmon.errors import SensorError
from node.hwmon.findings import Finding
from node.hwmon.parse import SmartReport, parse_smartctl

_MAX_OUTPUT = 4 << 20
# smartctl(8) exit status bits.
_BIT_OPEN_FAILED = 1 << 1
_BIT_COMMAND_FAILED = 1 << 2
_BIT_FAILING = 1 << 3
_BIT_PREFAIL = 1 << 4


def _lower_priority() -> None:
    set_idle_io_priority()
    with contextlib.suppress(OSError):
        os.nice(10)


async def read_smart(smartctl: str, device: str, timeout: float) -> SmartReport:
    """Run ``smartctl --json -H -A -i DEVICE``; SensorError when missing, hung or nonsense."""
    exe = shutil.which(smartctl)
    if exe is None:
        raise SensorError(
            f"{smartctl} not found; install Debian package smartmontools for disk health checks"
        )
    proc = await asyncio.create_subprocess_exec(
        exe, "--json", "-H", "-A", "-i", device,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,
        preexec_fn=_lower_priority,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            await proc.wait()
        raise SensorError(
            f"{smartctl} did not answer for {device} within {timeout:g} s (hung disk or USB bridge)"
        ) from None
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return parse_smartctl(device, out[:_MAX_OUTPUT].decode("utf-8", "replace"))


def smart_finding(report: SmartReport) -> Finding:
    """What a SMART report means for the owner."""
    dev = report.device
    if report.passed is False or report.exit_status & (_BIT_FAILING | _BIT_PREFAIL):
        return Finding(
            "fail",
            "smart",
            f"{dev} {report.model} reports it is failing (SMART health check failed)",
            "copy what matters and replace the disk soon; the network will re-replicate its chunks",
        )
    bad = [
        f"{label} {n}"
        for label, n in (
            ("reallocated sectors", report.reallocated_sectors),
            ("pending sectors", report.pending_sectors),
            ("media errors", report.media_errors),
        )
        if n
    ]
    if bad:
        return Finding(
            "warn",
            "smart",
            f"{dev} health passes but shows {', '.join(bad)}",
            "watch the counts; plan to replace the disk if they grow",
        )
    if report.passed is None:
        why = "; ".join(report.messages[:2]) or f"smartctl exit status {report.exit_status}"
        return Finding(
            "warn",
            "smart",
            f"no SMART health for {dev} ({why})",
            "many USB bridges hide SMART; try `smartctl -d sat -H` by hand, "
            "or use a UASP/SAT-capable enclosure",
        )
    temp = f", {report.temperature_c:g} C" if report.temperature_c is not None else ""
    return Finding(
        "ok", "smart", f"{dev} {report.model} SMART health passed{temp}".replace("  ", " ")
    )
