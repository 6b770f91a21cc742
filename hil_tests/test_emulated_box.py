"""The emulated Raspberry Pi box: an SD image built by `bitchat-fleet image build` from an
arm64 Debian base laid out like Raspberry Pi OS, booted under QEMU, then enrolled, inspected,
and broken on purpose. Enabled by BITCHAT_HIL_EMUBOX=1, and always under CI=true."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hil_tests.emubox import EmulatedBox, ensure_base, make_base_image
from tests.support import IN_CI, require_binary, require_root

pytestmark = pytest.mark.emubox
TOKEN = "emubox-enrollment-token-0123456789"
DATA = "/var/lib/bitchat-node"
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
def operator_key(workdir: Path) -> Path:
    key = workdir / "operator_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@emubox", "-f", str(key)],
        check=True,
    )
    return key


@pytest.fixture(scope="module")
def recipe(workdir: Path, operator_key: Path) -> Path:
    path = workdir / "recipe.toml"
    pub = operator_key.with_suffix(".pub").read_text().strip()
    path.write_text(
        f"""
[image]
hostname = "bitchat-{{serial}}"
first_boot = "firstrun"
timezone = "Etc/UTC"

[user]
name = "pi"
ssh_authorized_keys = [{json.dumps(pub)}]

[agent]
enrollment_token = "{TOKEN}"
wheelhouse = "auto"
python_version = "3.11"
"""
    )
    return path


@pytest.fixture(scope="module")
def image(workdir: Path, recipe: Path) -> Path:
    """Base image (cached tree) customised by `bitchat-fleet image build`, as for a real Pi."""
    base = ensure_base()
    base_img = make_base_image(base, workdir / "raspios-like.img")
    out = workdir / "box.img"
    result = subprocess.run(
        [sys.executable, "-m", "provisioning", "image", "build", "--base", str(base_img),
         "--recipe", str(recipe), "-o", str(out)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    base_img.unlink()
    return out


@pytest.fixture(scope="module")
def box(workdir: Path, image: Path) -> Iterator[EmulatedBox]:
    base = ensure_base()
    emu = EmulatedBox(image, base, workdir / "qemu")
    began = time.monotonic()
    with emu:
        emu.wait_for_ssh(BOOT_TIMEOUT)
        emu.boot_seconds = time.monotonic() - began  # type: ignore[attr-defined]
        yield emu


def ssh(box: EmulatedBox, key: Path, command: str, timeout: float = 300) -> str:
    result = subprocess.run(
        ["ssh", "-i", str(key), "-p", str(box.ssh_port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ConnectTimeout=20", "pi@127.0.0.1", command],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert result.returncode == 0, f"{command!r}: {result.stderr.strip()[-800:]}"
    return result.stdout


def web_json(box: EmulatedBox, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{box.forwards[7780]}{path}", timeout=20) as r:
        return json.load(r)


def wait_for_agent(box: EmulatedBox, timeout: float = BOOT_TIMEOUT) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        box.poll()
        try:
            status: dict[str, Any] = web_json(box, "/api/status")
            return status
        except (OSError, ValueError) as exc:
            last = exc
            time.sleep(5)
    raise AssertionError(f"the agent's dashboard never answered ({last}): {box.tail()}")


def test_first_boot_enroll_dashboard_doctor(
    box: EmulatedBox, operator_key: Path, recipe: Path, workdir: Path
) -> None:
    status = wait_for_agent(box)
    assert len(status["node_id"]) == 52
    # The OS side: firstrun.sh ran once and removed itself (as on a Pi), the box rebooted.
    assert "systemd.run" not in box.cmdline()
    assert box.boots >= 2
    inventory = workdir / "inventory.db"
    result = subprocess.run(
        [sys.executable, "-m", "provisioning", "enroll", f"pi@127.0.0.1:{box.ssh_port}",
         "--recipe", str(recipe), "--inventory", str(inventory), "-i", str(operator_key)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert status["node_id"] in result.stdout
    doctor = ssh(
        box,
        operator_key,
        "sudo bitchat-node doctor --json --data-dir /var/lib/bitchat-node || true",
    )
    findings = json.loads(doctor)
    assert findings, "doctor printed no checks"


def test_power_cut_and_reboot(box: EmulatedBox, operator_key: Path) -> None:
    before = wait_for_agent(box)
    ssh(box, operator_key, "sync")
    box.power_cut()
    box.start()
    box.wait_for_ssh(BOOT_TIMEOUT)
    after = wait_for_agent(box)
    assert after["node_id"] == before["node_id"]
