"""The steps an operator takes with a fresh box, shared by the emulated-box test and bench.box:
make an operator key and a recipe, build the image with `bitchat-fleet image build`, boot it,
wait for the agent, enroll it with `bitchat-fleet enroll`, run commands over SSH."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from hil_tests.emubox import EmuBoxError, EmulatedBox, ensure_base, make_base_image

TOKEN = "emubox-enrollment-token-0123456789"
DATA = "/var/lib/bitchat-node"


def operator_key(workdir: Path) -> Path:
    key = workdir / "operator_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@emubox", "-f",
             str(key)],
            check=True,
        )  # fmt: skip
    return key


def write_recipe(workdir: Path, key: Path) -> Path:
    path = workdir / "recipe.toml"
    pub = key.with_suffix(".pub").read_text().strip()
    path.write_text(
        "[image]\n"
        'hostname = "bitchat-{serial}"\n'
        'first_boot = "firstrun"\n'
        'timezone = "Etc/UTC"\n\n'
        "[user]\n"
        'name = "pi"\n'
        f"ssh_authorized_keys = [{json.dumps(pub)}]\n\n"
        "[agent]\n"
        f'enrollment_token = "{TOKEN}"\n'
        'wheelhouse = "auto"\n'
        'python_version = "3.11"\n'
    )
    return path


def build_image(workdir: Path, recipe: Path) -> Path:
    """The cached base, laid out as an SD card, customised exactly as a real image is."""
    base = ensure_base()
    base_img = make_base_image(base, workdir / "raspios-like.img")
    out = workdir / "box.img"
    result = subprocess.run(
        [sys.executable, "-m", "provisioning", "image", "build", "--base", str(base_img),
         "--recipe", str(recipe), "-o", str(out)],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if result.returncode != 0:
        raise EmuBoxError(f"bitchat-fleet image build failed: {result.stderr.strip()[-1500:]}")
    base_img.unlink()
    return out


def ssh(box: EmulatedBox, key: Path, command: str, timeout: float = 600) -> str:
    result = subprocess.run(
        ["ssh", "-i", str(key), "-p", str(box.ssh_port), "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30", "pi@127.0.0.1", command],
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    if result.returncode != 0:
        raise EmuBoxError(f"ssh {command!r} failed: {result.stderr.strip()[-800:]}")
    return result.stdout


def web_json(box: EmulatedBox, path: str) -> Any:
    url = f"http://127.0.0.1:{box.forwards[7780]}{path}"
    with urllib.request.urlopen(url, timeout=30) as resp:
        return json.load(resp)


def wait_for_agent(box: EmulatedBox, timeout: float) -> dict[str, Any]:
    """Wait until the box's dashboard answers /api/status (powering on again after reboots)."""
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
    raise EmuBoxError(f"the agent's dashboard never answered ({last}): {box.tail()}")


def enroll(box: EmulatedBox, key: Path, recipe: Path, inventory: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "provisioning", "enroll", f"pi@127.0.0.1:{box.ssh_port}",
         "--recipe", str(recipe), "--inventory", str(inventory), "-i", str(key)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    if result.returncode != 0:
        raise EmuBoxError(f"bitchat-fleet enroll failed: {result.stdout}{result.stderr}")
    return result.stdout
