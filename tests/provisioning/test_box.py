from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from provisioning import box, image
from tests.provisioning.wheels import make_wheel

PYTHON = f"{sys.version_info[0]}.{sys.version_info[1]}"


def test_hosts_entry_follows_the_new_hostname(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n127.0.1.1\traspberrypi\n")
    box.set_hosts_entry("bitchat-a1b2c3", hosts)
    lines = hosts.read_text().splitlines()
    assert "127.0.1.1\tbitchat-a1b2c3" in lines
    assert not any("raspberrypi" in line for line in lines)
    assert lines[:2] == ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost"]
    box.set_hosts_entry("bitchat-a1b2c3", hosts)
    assert hosts.read_text().count("127.0.1.1") == 1


def test_hosts_entry_when_the_file_is_missing(tmp_path: Path) -> None:
    hosts = tmp_path / "hosts"
    box.set_hosts_entry("box", hosts)
    assert hosts.read_text() == "127.0.0.1\tlocalhost\n127.0.1.1\tbox\n"


def test_firstboot_uses_the_release_the_image_holds(tmp_path: Path) -> None:
    """An image built with the release installed: first boot runs no pip (options pip would
    refuse prove it), makes the identity with that release and makes it current."""
    prefix, data = tmp_path / "opt", tmp_path / "data"
    house = prefix / "wheelhouse"
    make_wheel("0.1.0", house)
    assert image.preinstall(house, "0.1.0", PYTHON, prefix / "releases" / "0.1.0", print)
    env = {
        **os.environ,
        "BITCHAT_PREFIX": str(prefix),
        "BITCHAT_DATA_DIR": str(data),
        "BITCHAT_ETC": str(tmp_path / "etc"),
        "BITCHAT_PYTHON": sys.executable,
        "BITCHAT_PIP_OPTS": "--no-such-pip-option",
        "BITCHAT_USER": "",
        "BITCHAT_HOSTNAME": "",
        "BITCHAT_VERSION": "0.1.0",
    }
    proc = subprocess.run(
        [sys.executable, box.__file__, "firstboot"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "firstboot step=install how=in_image" in proc.stdout
    assert os.readlink(prefix / "current") == "releases/0.1.0"
    assert (data / "identity.key").stat().st_mode & 0o777 == 0o600
    # The same box with the release missing goes to the wheelhouse (and this pip refuses).
    shutil.rmtree(prefix / "releases")
    (prefix / "current").unlink()
    proc = subprocess.run(
        [sys.executable, box.__file__, "install", "0.1.0"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "no-such-pip-option" in proc.stderr
