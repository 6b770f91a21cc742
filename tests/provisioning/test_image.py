from __future__ import annotations

import importlib.util
import json
import lzma
import marshal
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import zstandard
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from provisioning import bmap, image, recipe
from provisioning.cli import main
from provisioning.errors import ImageError
from provisioning.mbr import SECTOR, parse_mbr
from tests.provisioning.conftest import write_recipe
from tests.provisioning.pi_image import BOOT_SECTORS, BOOT_START, ROOT_SECTORS
from tests.provisioning.wheels import REPO, make_wheel
from tests.support import require_binary

ROOT_START = BOOT_START + BOOT_SECTORS
EXAMPLE = Path(__file__).resolve().parents[2] / "images" / "recipe.example.toml"


def _extract(img: Path, start: int, sectors: int, dest: Path) -> Path:
    with img.open("rb") as src, dest.open("wb") as out:
        src.seek(start * SECTOR)
        left = sectors * SECTOR
        while left:
            chunk = src.read(min(left, 1 << 20))
            out.write(chunk)
            left -= len(chunk)
    return dest


def _fat_read(img: Path, name: str) -> bytes:
    mtype = require_binary("mtype", "mtools")
    env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
    return subprocess.run(
        [mtype, "-i", f"{img}@@{BOOT_START * SECTOR}", f"::/{name}"],
        check=True,
        capture_output=True,
        env=env,
    ).stdout


def _ext4(root: Path, request: str) -> bytes:
    debugfs = require_binary("debugfs", "e2fsprogs")
    return subprocess.run(
        [debugfs, "-R", request, str(root)], check=True, capture_output=True
    ).stdout


def _check_filesystems(img: Path, tmp: Path) -> tuple[Path, Path]:
    fsck_vfat = require_binary("fsck.vfat", "dosfstools")
    e2fsck = require_binary("e2fsck", "e2fsprogs")
    boot = _extract(img, BOOT_START, BOOT_SECTORS, tmp / "boot.part")
    root = _extract(img, ROOT_START, ROOT_SECTORS, tmp / "root.part")
    fat = subprocess.run([fsck_vfat, "-n", str(boot)], capture_output=True, text=True)
    assert fat.returncode == 0, fat.stdout + fat.stderr
    ext = subprocess.run([e2fsck, "-fn", str(root)], capture_output=True, text=True)
    assert ext.returncode == 0, ext.stdout + ext.stderr
    return boot, root


def _stat(root: Path, path: str) -> tuple[int, int, int]:
    """(mode, uid, gid) of a path in the ext4 image."""
    out = _ext4(root, f'stat "{path}"').decode()
    mode = int(re.search(r"Mode:\s+(\d+)", out).group(1), 8)  # type: ignore[union-attr]
    m = re.search(r"User:\s+(\d+)\s+Group:\s+(\d+)", out)
    assert m is not None
    return mode, int(m.group(1)), int(m.group(2))


def test_build_firstrun_image_and_read_everything_back(
    tmp_path: Path, base_image: Path, operator_key: Path, wheelhouse: Path
) -> None:
    rpath = write_recipe(tmp_path / "recipe.toml", operator_key, wheelhouse)
    rec = recipe.load(rpath)
    out = tmp_path / "out" / "box.img"
    result = image.build(base_image, rec, out)
    assert result.first_boot == "firstrun"
    assert out.with_name("box.img.sha256").read_text() == f"{result.sha256}  box.img\n"
    assert image.sha256_file(out) == result.sha256
    block_map = bmap.load(out.with_name("box.img.bmap"))
    assert block_map.image_size == out.stat().st_size == base_image.stat().st_size
    assert 0 < block_map.mapped_blocks < block_map.blocks_count
    with out.open("rb") as fh:
        assert len(parse_mbr(fh.read(SECTOR))) == 2
    _, root = _check_filesystems(out, tmp_path)

    # The FAT side: firstrun.sh hooked into cmdline.txt, SSH enabled.
    cmdline = _fat_read(out, "cmdline.txt").decode()
    assert cmdline.startswith("console=serial0") and cmdline.count("systemd.run=") == 1
    assert "systemd.run=/boot/firmware/firstrun.sh " in cmdline  # bookworm layout
    firstrun = _fat_read(out, "firstrun.sh").decode()
    assert "NEW_USER=operator" in firstrun and "operator@laptop" in firstrun
    assert "Europe/Berlin" in firstrun and "de_DE.UTF-8" in firstrun
    assert _fat_read(out, "ssh") == b""
    assert _fat_read(out, "config.txt") == b"[all]\narm_64bit=1\n"  # untouched

    # The ext4 side: every injected file, byte for byte, with its mode and owner.
    wheelhouse_files = {
        f"/opt/bitchat-node/wheelhouse/{w.name}": w.read_bytes() for w in wheelhouse.iterdir()
    }
    files = image.root_files(rec, wheelhouse, "0.1.0")
    assert set(wheelhouse_files) <= set(files)
    for path, f in files.items():
        assert _ext4(root, f'cat "{path}"') == f.data, path
        assert _stat(root, path) == (f.mode, 0, 0), path
    assert _stat(root, "/etc/bitchat-node/enrollment.token")[0] == 0o600
    nm = _ext4(root, 'cat "/etc/NetworkManager/system-connections/bitchat-wifi.nmconnection"')
    assert b"ssid=Home \\\\ Net\n" in nm and b"psk=correct horse battery staple\n" in nm
    assert (
        _stat(root, "/etc/NetworkManager/system-connections/bitchat-wifi.nmconnection")[0] == 0o600
    )
    assert _ext4(root, 'cat "/var/lib/bitchat-node/config.toml"') == b'[node]\nname = "test box"\n'
    assert _stat(root, "/var/lib/bitchat-node")[0] == 0o700
    assert not _ext4(root, 'ls "/var/lib/bitchat-node"').count(b"identity.key")
    unit = _ext4(root, 'cat "/etc/systemd/system/bitchat-node.service"').decode()
    assert "ProtectSystem=strict" in unit
    for link, target in image.ROOT_SYMLINKS.items():
        out_stat = _ext4(root, f'stat "{link}"').decode()
        assert "Type: symlink" in out_stat and f'Fast link dest: "{target}"' in out_stat, link
    env = _ext4(root, 'cat "/etc/bitchat-node/box.env"').decode()
    assert "BITCHAT_VERSION=0.1.0" in env and "BITCHAT_HOSTNAME='bitchat-{serial}'" in env
    assert _ext4(root, 'cat "/etc/hostname"') == b"raspberrypi\n"  # base content kept


def test_same_inputs_same_bytes_and_idempotent_rebuild(
    tmp_path: Path, base_images: dict[str, Path], operator_key: Path, wheelhouse: Path
) -> None:
    rec = recipe.load(write_recipe(tmp_path / "r.toml", operator_key, wheelhouse))
    one = image.build(base_images["firstrun"], rec, tmp_path / "a.img")
    two = image.build(base_images["firstrun"], rec, tmp_path / "b.img")
    assert one.sha256 == two.sha256
    assert (tmp_path / "a.img.bmap").read_text() == (tmp_path / "b.img.bmap").read_text()
    # Customising an already customised image changes nothing further.
    again = tmp_path / "c.img"
    image.build(tmp_path / "a.img", rec, again)
    _check_filesystems(again, tmp_path)
    assert _fat_read(again, "cmdline.txt").count(b"systemd.run=") == 1


def test_cloud_init_image(
    tmp_path: Path, base_images: dict[str, Path], operator_key: Path, wheelhouse: Path
) -> None:
    rec = recipe.load(write_recipe(tmp_path / "r.toml", operator_key, wheelhouse))
    out = tmp_path / "ci.img"
    result = image.build(base_images["cloud-init"], rec, out)
    assert result.first_boot == "cloud-init"
    _check_filesystems(out, tmp_path)
    user_data = _fat_read(out, "user-data").decode()
    assert user_data.startswith("#cloud-config\n")
    doc = json.loads(user_data.split("\n", 1)[1])
    assert doc["users"][0]["name"] == "operator"
    assert doc["users"][0]["ssh_authorized_keys"] == list(rec.ssh_keys)
    assert doc["timezone"] == "Europe/Berlin" and doc["locale"] == "de_DE.UTF-8"
    assert json.loads(_fat_read(out, "network-config"))["network"]["version"] == 2
    assert _fat_read(out, "meta-data").startswith(b"instance-id: bitchat-")
    assert b"firstrun" not in _fat_read(out, "cmdline.txt")
    with pytest.raises(subprocess.CalledProcessError):
        _fat_read(out, "firstrun.sh")


def test_compressed_bases_give_the_same_image(
    tmp_path: Path, base_images: dict[str, Path], operator_key: Path, wheelhouse: Path
) -> None:
    rec = recipe.load(write_recipe(tmp_path / "r.toml", operator_key, wheelhouse))
    raw = base_images["firstrun"].read_bytes()
    plain = image.build(base_images["firstrun"], rec, tmp_path / "plain.img")
    packed = {
        "xz": lzma.compress(raw, preset=0),
        "zst": zstandard.ZstdCompressor(level=1).compress(raw),
    }
    for kind, data in packed.items():
        path = tmp_path / f"base.img.{kind}"
        path.write_bytes(data)
        assert image.build(path, rec, tmp_path / f"{kind}.img").sha256 == plain.sha256, kind


def test_bad_bases(tmp_path: Path, base_image: Path, operator_key: Path, wheelhouse: Path) -> None:
    rec = recipe.load(write_recipe(tmp_path / "r.toml", operator_key, wheelhouse))
    junk = tmp_path / "junk.img"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ImageError, match="55aa"):
        image.build(junk, rec, tmp_path / "o.img")
    cut = tmp_path / "cut.img"
    with base_image.open("rb") as fh:
        cut.write_bytes(fh.read(ROOT_START * SECTOR + 4096))
    with pytest.raises(ImageError, match="truncated"):
        image.build(cut, rec, tmp_path / "o.img")
    wrong = tmp_path / "base.img.xz"
    wrong.write_bytes(base_image.read_bytes()[:8192])
    with pytest.raises(ImageError, match="uncompressed data"):
        image.build(wrong, rec, tmp_path / "o.img")
    with pytest.raises(ImageError, match="does not exist"):
        image.build(tmp_path / "missing.img", rec, tmp_path / "o.img")
    assert not (tmp_path / "o.img").exists()


def test_empty_wheelhouse_is_refused(tmp_path: Path, base_image: Path, operator_key: Path) -> None:
    empty = tmp_path / "empty-wh"
    empty.mkdir()
    rec = recipe.load(write_recipe(tmp_path / "r.toml", operator_key, empty))
    with pytest.raises(ImageError, match="holds no bitchat_node"):
        image.build(base_image, rec, tmp_path / "o.img")


def test_example_recipe_builds_through_the_cli(
    tmp_path: Path, base_image: Path, wheelhouse: Path
) -> None:
    out = tmp_path / "example.img"
    result = CliRunner().invoke(
        main,
        [
            "image",
            "build",
            "--base",
            str(base_image),
            "--recipe",
            str(EXAMPLE),
            "-o",
            str(out),
            "--wheelhouse",
            str(wheelhouse),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sha256:" in result.output and out.exists()
    _check_filesystems(out, tmp_path)
    assert "change-this-passphrase" not in result.output


def test_cli_reports_recipe_errors(tmp_path: Path, base_image: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent]\nenrolment_token = 'x'\n")
    result = CliRunner().invoke(
        main,
        [
            "image",
            "build",
            "--base",
            str(base_image),
            "--recipe",
            str(bad),
            "-o",
            str(tmp_path / "o.img"),
        ],
    )
    assert result.exit_code == 1
    assert "agent.enrolment_token: unknown key" in result.output


def _pyc(root: Path, path: str) -> tuple[int, str]:
    """(flags, source file named in its code) of a .pyc in the ext4 image."""
    data = _ext4(root, f'cat "{path}"')
    assert data[:4] == importlib.util.MAGIC_NUMBER, path
    return int.from_bytes(data[4:8], "little"), marshal.loads(data[16:]).co_filename


def test_release_is_installed_in_the_image_and_byte_compiled_for_the_box(
    tmp_path: Path, base_image: Path, operator_key: Path, wheelhouse: Path
) -> None:
    rec = recipe.load(write_recipe(tmp_path / "r.toml", operator_key, wheelhouse))
    messages: list[str] = []
    result = image.build(base_image, rec, tmp_path / "box.img", log=messages.append)
    assert result.preinstalled, messages
    _, root = _check_filesystems(tmp_path / "box.img", tmp_path)
    release = "/opt/bitchat-node/releases/0.1.0"
    assert _ext4(root, f'cat "{release}/.installed"') == b"0.1.0\n"
    assert (
        _ext4(root, f'cat "{release}/node/__init__.py"')
        == (REPO / "node" / "__init__.py").read_bytes()
    )
    assert _stat(root, f"{release}/node/cli.py") == (0o644, 0, 0)
    # Hash-checked only by the interpreter's choice (unchecked): the image's file times do not
    # matter, and tracebacks name the files where they are on the box.
    tag = sys.implementation.cache_tag
    flags, source = _pyc(root, f"{release}/node/__pycache__/cli.{tag}.pyc")
    assert flags == 0b01
    assert source == f"{release}/node/cli.py"
    # The wheelhouse stays on the image for upgrades; no console scripts naming this machine.
    assert b"bitchat_node-0.1.0-py3-none-any.whl" in _ext4(
        root, 'ls "/opt/bitchat-node/wheelhouse"'
    )
    assert b"bitchat-node" not in _ext4(root, f'ls "{release}"').replace(b"bitchat_node", b"")
    assert "current" not in _ext4(root, 'ls "/opt/bitchat-node"').decode().split()
    # The venv first boot would make, made here: the system Python without its packages.
    cfg = _ext4(root, 'cat "/opt/bitchat-node/venv/pyvenv.cfg"').decode()
    assert "home = /usr/bin\n" in cfg and "include-system-site-packages = false\n" in cfg
    for link, target in image.venv_symlinks("3.11").items():
        assert f'Fast link dest: "{target}"' in _ext4(root, f'stat "{link}"').decode(), link


def test_release_needing_a_source_only_dependency_is_installed_on_first_boot(
    tmp_path: Path, base_image: Path, operator_key: Path
) -> None:
    house = tmp_path / "house"
    make_wheel("0.1.0", house, requires=("zfec>=1.5",))
    (house / "zfec-1.6.0.0.tar.gz").write_bytes(b"\x1f\x8b sdist stand-in bytes")
    rec = recipe.load(write_recipe(tmp_path / "r.toml", operator_key, house))
    messages: list[str] = []
    result = image.build(base_image, rec, tmp_path / "box.img", log=messages.append)
    assert not result.preinstalled
    assert any("zfec" in m and "on first boot" in m for m in messages), messages
    _, root = _check_filesystems(tmp_path / "box.img", tmp_path)
    listing = _ext4(root, 'ls "/opt/bitchat-node"').decode().split()
    assert "wheelhouse" in listing and "releases" not in listing
    assert b"zfec-1.6.0.0.tar.gz" in _ext4(root, 'ls "/opt/bitchat-node/wheelhouse"')


def test_no_host_python_of_the_box_version_leaves_the_install_to_first_boot(
    tmp_path: Path, wheelhouse: Path
) -> None:
    messages: list[str] = []
    assert image.preinstall(wheelhouse, "0.1.0", "3.99", tmp_path / "r", messages.append) is None
    assert messages and "Python 3.99" in messages[0] and "first boot" in messages[0]
    assert not (tmp_path / "r").exists()


def test_cpu_dependent_requirements_are_found(tmp_path: Path) -> None:
    make_wheel(
        "0.1.0",
        tmp_path,
        requires=(
            "click>=8",
            "rpi-lgpio>=0.6; extra == 'pi' and platform_machine == 'aarch64'",
        ),
    )
    assert image.cpu_dependent_wheels(tmp_path) == []
    assert image.wheel_requirements(tmp_path / "bitchat_node-0.1.0-py3-none-any.whl") == [
        "click>=8",
        "rpi-lgpio>=0.6; extra == 'pi' and platform_machine == 'aarch64'",
    ]
    make_wheel("0.2.0", tmp_path, requires=("fastcrc; platform_machine == 'x86_64'",))
    assert image.cpu_dependent_wheels(tmp_path) == ["bitchat_node-0.2.0-py3-none-any.whl"]


@settings(max_examples=50, deadline=None)
@given(data=st.binary(max_size=512))
def test_unreadable_wheels_are_refused_clearly(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "broken-1.0-py3-none-any.whl").write_bytes(data)
        try:
            found = image.cpu_dependent_wheels(Path(tmp))
        except ImageError as exc:
            assert "broken-1.0-py3-none-any.whl in the wheelhouse" in str(exc)
        else:
            assert found == []
