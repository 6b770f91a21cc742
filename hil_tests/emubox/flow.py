"""The steps an operator takes with a fresh box, shared by the emulated-box test and bench.box:
make an operator key and a recipe, build the image with `bitchat-fleet image build`, boot it,
wait for the agent, enroll it with `bitchat-fleet enroll`, run commands over SSH."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from hil_tests.emubox import (
    EmuBoxError,
    EmulatedBox,
    ensure_base,
    make_base_image,
    prebuild_wheels,
)
from provisioning.image import auto_wheelhouse

TOKEN = "emubox-enrollment-token-0123456789"
DATA = "/var/lib/bitchat-node"
T = TypeVar("T")
PYTHON = "3.11"  # Debian bookworm's, as Raspberry Pi OS Lite's


def operator_key(workdir: Path) -> Path:
    key = workdir / "operator_ed25519"
    if not key.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "operator@emubox", "-f",
             str(key)],
            check=True,
        )  # fmt: skip
    return key


def write_recipe(workdir: Path, key: Path, config: str = "") -> Path:
    """The operator's recipe; ``config`` is the agent's config.toml installed on the box."""
    path = workdir / "recipe.toml"
    pub = key.with_suffix(".pub").read_text().strip()
    agent_config = ""
    if config:
        (workdir / "box-config.toml").write_text(config)
        agent_config = f"config = {json.dumps(str(workdir / 'box-config.toml'))}\n"
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
        f'python_version = "{PYTHON}"\n' + agent_config
    )
    return path


def wheelhouse(workdir: Path) -> Path:
    """An operator's wheelhouse: the agent and its aarch64 dependencies, all as wheels.

    The index has no aarch64 wheel of some dependencies (zfec); those are built once from
    source inside the base under qemu-user and cached. With wheels only, the image build
    installs the release on the host, and first boot neither compiles nor installs anything.
    """
    house = workdir / "wheelhouse"
    auto_wheelhouse(PYTHON, lambda _msg: None, house)
    prebuild_wheels(house)
    return house


def build_image(workdir: Path, recipe: Path) -> Path:
    """The cached base, laid out as an SD card, customised exactly as a real image is."""
    base = ensure_base()
    house = wheelhouse(workdir)
    base_img = make_base_image(base, workdir / "raspios-like.img")
    out = workdir / "box.img"
    result = subprocess.run(
        [sys.executable, "-m", "provisioning", "image", "build", "--base", str(base_img),
         "--recipe", str(recipe), "--wheelhouse", str(house), "-o", str(out)],
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


def web(box: EmulatedBox) -> str:
    return f"http://127.0.0.1:{box.forwards[7780]}"


def cli(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    """``bitchat-node ARGS`` on the host."""
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=timeout
    )


def wait_until(what: str, cond: Callable[[], T], timeout: float, box: EmulatedBox) -> T:
    """Poll ``cond`` until it returns something true and return that; errors count as not yet.

    Powers the box on again after a reboot while waiting.
    """
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        box.poll()
        try:
            if result := cond():
                return result
        except (OSError, ValueError, KeyError, EmuBoxError) as exc:
            last = exc
        time.sleep(5)
    raise EmuBoxError(f"gave up waiting for {what} after {timeout:.0f} s ({last}): {box.tail()}")
