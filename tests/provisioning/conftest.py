from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.provisioning.boxes import FakeBox, start_boxes, stop_boxes
from tests.provisioning.pi_image import make_pi_image
from tests.provisioning.wheels import make_wheel
from tests.support import require_binary


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small local wheelhouse: this project's wheel, version 0.1.0, and the source of a
    dependency with no aarch64 wheel (as zfec), which the box builds on first boot."""
    path = tmp_path_factory.mktemp("wheelhouse")
    make_wheel("0.1.0", path)
    (path / "zfec-1.6.0.0.tar.gz").write_bytes(b"\x1f\x8b sdist stand-in bytes")
    return path


@pytest.fixture(scope="session")
def base_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Synthetic Raspberry Pi OS layouts: ``firstrun`` (classic) and ``cloud-init`` (newer)."""
    root = tmp_path_factory.mktemp("base")
    return {
        "firstrun": make_pi_image(root / "rpios-lite.img"),
        "cloud-init": make_pi_image(root / "rpios-lite-ci.img", cloud_init=True),
    }


@pytest.fixture
def base_image(base_images: dict[str, Path], tmp_path: Path) -> Path:
    """A private copy of the classic base image (tests may damage it)."""
    dest = tmp_path / "base.img"
    subprocess.run(["cp", "--sparse=always", str(base_images["firstrun"]), str(dest)], check=True)
    return dest


@pytest.fixture(scope="session")
def operator_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An operator's SSH key pair (private key path; .pub beside it)."""
    keygen = require_binary("ssh-keygen", "openssh-client")
    path = tmp_path_factory.mktemp("operator") / "id_ed25519"
    subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "operator@laptop", "-f", str(path)],
        check=True,
    )
    return path


def write_recipe(dest: Path, operator_key: Path, wheelhouse: Path, **extra: str) -> Path:
    """A complete recipe (Wi-Fi, config, key file) for tests."""
    config = dest.parent / "node-config.toml"
    config.write_text('[node]\nname = "test box"\n')
    shutil.copy(operator_key.with_suffix(".pub"), dest.parent / "operator.pub")
    body = f"""
[image]
hostname = "bitchat-{{serial}}"
timezone = "Europe/Berlin"
locale = "de_DE.UTF-8"
keyboard = "de"
{extra.get("image", "")}

[user]
name = "operator"
ssh_authorized_keys_files = ["operator.pub"]

[wifi]
ssid = "Home \\\\ Net"
psk = "correct horse battery staple"
country = "DE"

[agent]
enrollment_token = "enroll-0123456789abcdef"
wheelhouse = "{wheelhouse}"
config = "node-config.toml"
"""
    dest.write_text(body)
    return dest


@pytest.fixture(scope="module")
def boxes(
    tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path, operator_key: Path
) -> Iterator[list[FakeBox]]:
    """Three boxes, each a real sshd on loopback in front of a real agent."""
    require_binary("sshd", "openssh-server")
    started = start_boxes(
        tmp_path_factory.mktemp("fleet"), 3, wheelhouse, operator_key.with_suffix(".pub")
    )
    try:
        yield started
    finally:
        stop_boxes(started)
