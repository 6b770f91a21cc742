"""The emulated Raspberry Pi box: an SD image built by `bitchat-fleet image build` from an
arm64 Debian base laid out like Raspberry Pi OS, booted under QEMU, then enrolled, inspected,
and broken on purpose. Enabled by BITCHAT_HIL_EMUBOX=1, and always under CI=true."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hil_tests.emubox import EmulatedBox, ensure_base, flow
from tests.support import IN_CI, require_binary, require_root

# Building the image, two boots and the first boot's offline install take many minutes under
# software emulation; the suite's 300 s per-test default would cut them off.
pytestmark = [pytest.mark.emubox, pytest.mark.timeout(3000)]
BOOT_TIMEOUT = float(os.environ.get("BITCHAT_HIL_BOOT_TIMEOUT", "1200"))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("BITCHAT_HIL_EMUBOX") != "1" and not IN_CI:
        pytest.skip("the emulated box takes minutes: set BITCHAT_HIL_EMUBOX=1 to run it")
    require_root("building the emulated box base (debootstrap)")
    for binary, package in (
        ("qemu-system-aarch64", "qemu-system-arm"),
        ("qemu-aarch64-static", "qemu-user-static"),
        ("debootstrap", "debootstrap"),
        ("mcopy", "mtools"),
        ("mkfs.vfat", "dosfstools"),
        ("mke2fs", "e2fsprogs"),
        ("sfdisk", "fdisk"),
        ("ssh-keygen", "openssh-client"),
    ):
        require_binary(binary, package)
    return tmp_path_factory.mktemp("emubox")


@pytest.fixture(scope="module")
def key(workdir: Path) -> Path:
    return flow.operator_key(workdir)


@pytest.fixture(scope="module")
def recipe(workdir: Path, key: Path) -> Path:
    return flow.write_recipe(workdir, key)


@pytest.fixture(scope="module")
def box(workdir: Path, recipe: Path) -> Iterator[EmulatedBox]:
    image = flow.build_image(workdir, recipe)
    with EmulatedBox(image, ensure_base(), workdir / "qemu") as emu:
        emu.wait_for_ssh(BOOT_TIMEOUT)
        yield emu


def test_first_boot_enroll_dashboard_doctor(
    box: EmulatedBox, key: Path, recipe: Path, workdir: Path
) -> None:
    status = flow.wait_for_agent(box, BOOT_TIMEOUT)
    assert len(status["node_id"]) == 52
    # The OS side ran once from the boot partition and removed itself, as on a Pi.
    assert "systemd.run" not in box.cmdline()
    assert box.boots >= 2
    out = flow.enroll(box, key, recipe, workdir / "inventory.db")
    assert status["node_id"] in out
    doctor = flow.ssh(box, key, f"sudo bitchat-node doctor --json --data-dir {flow.DATA} || true")
    checks = json.loads(doctor)
    assert checks, "doctor printed no checks"
    hardware = flow.web_json(box, "/api/hardware")
    assert "thermal_level" in hardware or hardware.get("available") is False


def test_power_cut_and_reboot_keeps_identity(box: EmulatedBox, key: Path) -> None:
    before = flow.wait_for_agent(box, BOOT_TIMEOUT)
    box.power_cut()
    began = time.monotonic()
    box.start()
    box.wait_for_ssh(BOOT_TIMEOUT)
    after = flow.wait_for_agent(box, BOOT_TIMEOUT - (time.monotonic() - began))
    assert after["node_id"] == before["node_id"]
