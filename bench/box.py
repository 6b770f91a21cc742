"""The emulated box from power-on to enrolled, and what it costs at idle.

Builds an SD image with `bitchat-fleet image build` from the cached arm64 base (see
hil_tests/README.md), powers it on under QEMU (software emulation of a Cortex-A72: several
times slower than a Raspberry Pi 4, so the times here are an upper bound), and measures:

- time from power-on to SSH, to the agent's dashboard answering, and to `bitchat-fleet enroll`
  done, with no manual step and no router configuration (the goal is under 5 minutes), and its
  phases: the firstrun boot until its reboot, then (from systemd on the box) the second boot
  to basic.target, SSH host keys, `bitchat-box firstboot` and the agent's start;
- the agent's RSS and CPU at idle on the arm64 box (from /proc on the box over a window);
- bytes written to the SD card at idle (its wear), from the block device's write counter over a
  window, extrapolated to an hour. The emulated box has no separate data disk, so this counts
  the agent's own state too: an upper bound for a box whose data dir is on a USB disk.

Run (root): ``.venv/bin/python -m bench.box [--idle-seconds 300]``
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import tempfile
import time
from pathlib import Path

from hil_tests.emubox import EmulatedBox, ensure_base, flow

AGENT_STATS = (
    "pid=$(systemctl show -p MainPID --value bitchat-node); "
    "awk '/VmRSS/{print $2}' /proc/$pid/status; "
    "awk '{print $14+$15}' /proc/$pid/stat; getconf CLK_TCK; "
    "awk '{print $7}' /sys/block/vda/stat"
)

# Phases of the boot after the firstrun reboot, from systemd's monotonic clock on the box
# (seconds since that power-on): unit, property where the phase begins, property where it ends.
PHASES = (
    ("  boot 2: kernel + userspace to basic.target", "basic.target", "", "ActiveEnter"),
    (
        "  boot 2: SSH host keys generated",
        "regenerate-ssh-host-keys",
        "ExecMainStart",
        "ExecMainExit",
    ),
    ("  boot 2: bitchat-box firstboot", "bitchat-node-firstboot", "ExecMainStart", "ExecMainExit"),
    ("  boot 2: agent start to ready (sd_notify)", "bitchat-node", "ExecMainStart", "ActiveEnter"),
)


def sample(box: EmulatedBox, key: Path) -> tuple[int, int, int, int]:
    rss_kb, ticks, hz, sectors = flow.ssh(
        box, key, "sudo sh -c " + shlex.quote(AGENT_STATS)
    ).split()
    return int(rss_kb), int(ticks), int(hz), int(sectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle-seconds", type=float, default=300.0)
    parser.add_argument("--boot-timeout", type=float, default=1800.0)
    args = parser.parse_args()

    print(f"{'figure':<48} {'measured':>12}  goal", flush=True)
    work = Path(tempfile.mkdtemp(prefix="bench-box-"))
    try:
        measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the image and QEMU overlays: about 1 GB


def measure(args: argparse.Namespace, work: Path) -> None:
    key = flow.operator_key(work)
    recipe = flow.write_recipe(work, key)
    t0 = time.monotonic()
    image = flow.build_image(work, recipe)
    build_s = time.monotonic() - t0
    print(f"{'image build (bitchat-fleet image build)':<48} {build_s:>10.1f} s", flush=True)
    with EmulatedBox(image, ensure_base(), work / "qemu") as box:
        power_on = time.monotonic()
        box.wait_for_ssh(args.boot_timeout)
        ssh_s = time.monotonic() - power_on
        print(f"{'power-on -> SSH (after the firstrun reboot)':<48} {ssh_s:>10.1f} s", flush=True)
        flow.wait_for_agent(box, args.boot_timeout)
        agent_s = time.monotonic() - power_on
        print(f"{'power-on -> dashboard answering':<48} {agent_s:>10.1f} s", flush=True)
        flow.enroll(box, key, recipe, work / "inventory.db")
        enrolled_s = time.monotonic() - power_on
        print(f"{'power-on -> enrolled':<48} {enrolled_s:>10.1f} s  <= 300 s", flush=True)
        if len(box.started) > 1:
            reboot_s = box.started[1] - box.started[0]
            print(f"{'  boot 1: firstrun.sh, until its reboot':<48} {reboot_s:>10.1f} s")
        for label, unit, begin, end in PHASES:
            props = [f"{p}TimestampMonotonic" for p in (begin, end) if p]
            out = flow.ssh(box, key, f"systemctl show {' '.join('-p ' + p for p in props)} {unit}")
            t = {k: int(v) / 1e6 for k, v in (line.split("=", 1) for line in out.split())}
            took = t[props[-1]] - (t[props[0]] if begin else 0.0)
            print(f"{label:<48} {took:>10.1f} s  (ends {t[props[-1]]:.1f} s into boot 2)")
        print(flush=True)
        time.sleep(30)  # let first-start work settle before the idle window
        _, ticks0, hz, sec0 = sample(box, key)
        began = time.monotonic()
        time.sleep(args.idle_seconds)
        rss1, ticks1, _, sec1 = sample(box, key)
        window = time.monotonic() - began
    cpu_pct = 100.0 * (ticks1 - ticks0) / hz / window
    written = (sec1 - sec0) * 512
    print(f"{'boots (power-on, firstrun reboot)':<48} {box.boots:>12}")
    print(f"{'agent RSS at idle':<48} {rss1 / 1024:>9.1f} MB  <= 60 MB")
    print(f"{'agent CPU at idle':<48} {cpu_pct:>10.2f} %  near zero")
    print(
        f"{'SD card writes at idle (per hour, ' + str(int(window)) + ' s window)':<48} "
        f"{written * 3600 / window / 1024:>9.1f} KB/h"
    )


if __name__ == "__main__":
    main()
