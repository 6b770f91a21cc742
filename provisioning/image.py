"""``image build``: customise a Raspberry Pi OS image without mounting it and without root.

The base (raw, .xz, .gz or .zst) is decompressed into a sparse output file; its MBR is read
here (provisioning.mbr); the FAT boot partition is edited in place with mtools
(``-i OUT@@offset``) and the ext4 root with debugfs (``OUT?offset=N``). Every timestamp comes
from SOURCE_DATE_EPOCH (mtools reads it; e2fsprogs reads E2FSPROGS_FAKE_TIME) and every file
is written in sorted order, so the same inputs give the same bytes. The result is OUT.img,
OUT.img.sha256 and OUT.img.bmap (bmaptool's format).

The agent's release is installed here, on the host, when the wheelhouse allows it (aarch64
wheels of every dependency, a host Python of the box's version to byte-compile with): first
boot under a slow CPU then only wires up the user and the venv. Otherwise first boot installs
it from the wheelhouse on the image, which stays there for later upgrades either way.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from provisioning import bmap as bmapmod
from provisioning import compress, mbr
from provisioning.errors import ImageError
from provisioning.recipe import Recipe

DEFAULT_EPOCH = 1704067200  # 2024-01-01T00:00:00Z, used when SOURCE_DATE_EPOCH is unset
PREFIX = "/opt/bitchat-node"
ETC = "/etc/bitchat-node"
_SPARSE_GRAIN = 64 << 10
_WHEEL = re.compile(r"^bitchat_node-([0-9][0-9A-Za-z.+!]*?)-py3-none-any\.whl$")
_DEBUGFS_ERRORS = re.compile(
    r"(not found|No such file|cannot|Could not|Invalid|error|Bad |Unknown request|"
    r"Filesystem opened read/only|No free space|Ext2 inode is not a directory)",
    re.IGNORECASE,
)
_FIRSTRUN_ARGS = (
    "systemd.run={boot}/firstrun.sh systemd.run_success_action=reboot "
    "systemd.unit=kernel-command-line.target"
)
# Platforms of the box's wheels: manylinux tags (pip also accepts the older glibc levels) and
# linux_aarch64, the tag of wheels built on an aarch64 machine.
_AARCH64_PLATFORMS = (
    "manylinux2014_aarch64",
    "manylinux_2_28_aarch64",
    "manylinux_2_34_aarch64",
)
_EXTRA = re.compile(r"\bextra\s*==")
_GROUPS = "users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo"

Progress = Callable[[str], None]


@dataclass
class BuildResult:
    image: Path
    sha256: str
    bmap: Path
    first_boot: str
    """cloud-init or firstrun: how the OS side was customised."""
    size: int
    mapped_bytes: int
    seconds: float
    files: dict[str, list[str]] = field(default_factory=dict)
    """Injected paths: ``boot`` (FAT) and ``root`` (ext4)."""
    preinstalled: bool = False
    """The agent's release is installed in the image (else first boot installs it)."""


@dataclass(frozen=True)
class _File:
    """One file for the ext4 side: contents, mode, owner."""

    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def source_date_epoch() -> int:
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return DEFAULT_EPOCH
    if not value.isdigit():
        raise ImageError(f"SOURCE_DATE_EPOCH={value!r} is not a number of seconds")
    # FAT cannot store dates before 1980.
    return max(int(value), 315532800)


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        raise ImageError(f"{name} not found: install the Debian package {package}")
    return path


def _run(cmd: list[str], env: dict[str, str], what: str) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env})
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise ImageError(f"{what} failed: {' | '.join(detail[-3:]) or f'exit {proc.returncode}'}")
    return proc.stdout


# -- decompress into a sparse file ---------------------------------------------------------


def unpack(base: Path, out: Path) -> int:
    """Write the base image's bytes to ``out``, leaving all-zero runs as holes; its size."""
    zero = bytes(_SPARSE_GRAIN)
    size = 0
    with compress.open_image(base) as reader, out.open("wb") as dst:
        for chunk in compress.iter_chunks(reader):
            view = memoryview(chunk)
            if chunk.count(0) != len(chunk):
                for off in range(0, len(chunk), _SPARSE_GRAIN):
                    part = view[off : off + _SPARSE_GRAIN]
                    if part != zero[: len(part)]:
                        dst.seek(size + off)
                        dst.write(part)
            size += len(chunk)
        dst.truncate(size)
    if size == 0:
        raise ImageError(f"{base} is empty")
    return size


# -- wheelhouse ------------------------------------------------------------------------------


def wheel_version(wheelhouse: Path) -> str:
    """Version of the (single newest) bitchat_node wheel in a wheelhouse."""
    versions = sorted(m.group(1) for p in wheelhouse.iterdir() if (m := _WHEEL.match(p.name)))
    if not versions:
        raise ImageError(
            f"wheelhouse {wheelhouse} holds no bitchat_node-*-py3-none-any.whl: build it with "
            "'pip wheel --no-deps -w DIR .' in the bitchat-node checkout"
        )
    return versions[-1]


def _download_deps(reqs: list[str], python_version: str, deps: Path, log: Progress) -> None:
    """pip download of aarch64 wheels (sdists where none exist) into ``deps``."""
    part = deps.with_name(deps.name + ".part")
    part.mkdir(parents=True, exist_ok=True)  # pip skips files an earlier try downloaded
    log(f"downloading {len(reqs)} dependencies for aarch64 / Python {python_version}")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        "-d",
        str(part),
    ]
    for plat in _AARCH64_PLATFORMS:
        cmd += ["--platform", plat]
    for req in reqs:
        try:
            _run([*cmd, req], {}, f"pip download of {req} for aarch64")
        except ImageError:
            # No aarch64 wheel on the index: ship the sdist, built on first boot (needs a
            # compiler on the image), and say so.
            sdist = [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary=:all:",
                "-d",
                str(part),
                req,
            ]
            _run(sdist, {}, f"pip download of {req} (source)")
            # pip builds it offline in an isolated environment: that needs these wheels too.
            _run([*cmd, "setuptools>=68", "wheel"], {}, "pip download of the build tools")
            log(
                f"warning: {req} has no aarch64 wheel; its source is in the wheelhouse and is "
                "compiled on first boot (gcc and python3-dev needed on the image), or put a "
                "prebuilt wheel in a wheelhouse directory"
            )
    part.rename(deps)


def auto_wheelhouse(python_version: str, log: Progress, dest: Path) -> Path:
    """Fill ``dest`` with aarch64 wheels of the agent's dependencies and a fresh wheel of it.

    This project's wheel is built anew each time, so an image never carries a stale agent, and
    the dependencies are those its metadata names (not those of whatever version is installed
    here). Downloads are cached per requirement set in ~/.cache/bitchat-fleet.
    """
    dest.mkdir(parents=True, exist_ok=True)
    source = Path(__file__).resolve().parent.parent
    if not (source / "pyproject.toml").is_file():
        raise ImageError(
            "wheelhouse = auto needs the bitchat-node source tree to build its wheel; "
            "set agent.wheelhouse to a directory holding bitchat_node-*.whl"
        )
    part = dest
    log("building the bitchat-node wheel")
    with tempfile.TemporaryDirectory(prefix="bitchat-wheel-") as tmp:
        # Build from a snapshot so a concurrent build/ or egg-info in the checkout cannot race.
        snap = Path(tmp) / "src"
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "build", "*.egg-info")
        snap.mkdir()
        for name in ("pyproject.toml", "README.md"):
            if (source / name).exists():
                shutil.copy2(source / name, snap / name)
        for pkg in ("node", "provisioning"):
            shutil.copytree(source / pkg, snap / pkg, ignore=ignore)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(part),
            str(snap),
        ]
        _run(cmd, {"SOURCE_DATE_EPOCH": str(source_date_epoch())}, "building the wheel")
    agent = dest / f"bitchat_node-{wheel_version(dest)}-py3-none-any.whl"
    reqs = [r for r in wheel_requirements(agent) if not _EXTRA.search(r)]
    key = hashlib.sha256("\n".join(sorted(reqs)).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bitchat-fleet"
    deps = cache / f"deps-py{python_version}-aarch64-{key}"
    if not deps.is_dir():
        _download_deps(reqs, python_version, deps, log)
    for wheel in sorted(deps.iterdir()):
        shutil.copy2(wheel, dest / wheel.name)
    return dest


# -- the release, installed on the host ------------------------------------------------------


def box_python(python_version: str) -> str | None:
    """A host interpreter of the box's Python version (its byte code is the box's), if any."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == python_version:
        return sys.executable
    return shutil.which(f"python{python_version}")


def cpu_dependent_wheels(wheelhouse: Path) -> list[str]:
    """Wheels whose requirements depend on the CPU: pip would evaluate them for the host's."""
    # Requirements of extras are not installed (the image asks for none).
    return [
        wheel.name
        for wheel in sorted(wheelhouse.glob("*.whl"))
        if any("platform_machine" in r and not _EXTRA.search(r) for r in wheel_requirements(wheel))
    ]


def wheel_requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's metadata."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            text = zf.read(meta).decode(errors="replace")
    except (OSError, zipfile.BadZipFile, StopIteration) as exc:
        raise ImageError(f"{wheel.name} in the wheelhouse is not a readable wheel: {exc}") from exc
    head = text.split("\n\n", 1)[0]  # the body (long description) may quote anything
    prefix = "Requires-Dist:"
    return [line[len(prefix) :].strip() for line in head.splitlines() if line.startswith(prefix)]


def preinstall(
    wheelhouse: Path, version: str, python_version: str, dest: Path, log: Progress
) -> Path | None:
    """Install release ``version`` for an aarch64 box into ``dest``; None if the host cannot.

    ``pip install --target`` from the wheelhouse only, choosing aarch64 wheels for CPython
    ``python_version``, as first boot would; then every module is byte-compiled with a host
    interpreter of that version, naming the box's paths, with unchecked-hash invalidation (a
    release is never edited in place, and the files' times on the image say nothing).
    """
    python = box_python(python_version)
    if python is None:
        log(
            f"no Python {python_version} on this machine to byte-compile the agent for the box; "
            "the box installs it from the wheelhouse on first boot"
        )
        return None
    if os.uname().machine != "aarch64" and (marked := cpu_dependent_wheels(wheelhouse)):
        log(
            f"requirements of {', '.join(marked)} depend on the CPU; the box installs the "
            "agent from the wheelhouse on first boot"
        )
        return None
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-index",
        "--no-compile",
        "--disable-pip-version-check",
        "--find-links",
        str(wheelhouse),
        "--target",
        str(dest),
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python_version,
    ]
    for plat in (*_AARCH64_PLATFORMS, "linux_aarch64"):
        cmd += ["--platform", plat]
    proc = subprocess.run([*cmd, f"bitchat-node=={version}"], capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        log(
            f"the agent cannot be installed on this machine ({' | '.join(detail[-2:])}); "
            "the box installs it from the wheelhouse on first boot"
        )
        return None
    # Console scripts name the host's interpreter; the box runs the agent with ``-m node``.
    shutil.rmtree(dest / "bin", ignore_errors=True)
    compile_cmd = [
        python,
        "-m",
        "compileall",
        "-q",
        "-j",
        "0",
        "--invalidation-mode",
        "unchecked-hash",
        "-s",
        str(dest),
        "-p",
        f"{PREFIX}/releases/{version}",
        str(dest),
    ]
    _run(compile_cmd, {}, "byte-compiling the agent for the box")
    (dest / ".installed").write_text(version + "\n")
    return dest


def release_files(tree: Path, version: str) -> dict[str, _File]:
    """The files of an installed release tree, at their place on the box."""
    files: dict[str, _File] = {}
    for path in sorted(tree.rglob("*")):
        if path.is_symlink() or not path.is_file():
            if path.is_symlink():
                raise ImageError(f"{path} in the installed release is a symlink")
            continue
        mode = 0o755 if path.stat().st_mode & 0o111 else 0o644
        rel = path.relative_to(tree).as_posix()
        files[f"{PREFIX}/releases/{version}/{rel}"] = _File(path.read_bytes(), mode)
    return files


# -- file contents ---------------------------------------------------------------------------


def _env_file(values: dict[str, str]) -> bytes:
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(values.items())).encode()


def _keyfile_value(text: str) -> str:
    """Escape a value for a GKeyFile (NetworkManager keyfile) line."""
    out = text.replace("\\", "\\\\")
    return "\\s" + out[1:] if out.startswith(" ") else out


def nmconnection(recipe: Recipe) -> bytes:
    assert recipe.wifi is not None
    w = recipe.wifi
    conn_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"bitchat-wifi:{w.ssid}")
    lines = [
        "[connection]",
        "id=bitchat-wifi",
        f"uuid={conn_uuid}",
        "type=wifi",
        "autoconnect=true",
        "",
        "[wifi]",
        "mode=infrastructure",
        f"ssid={_keyfile_value(w.ssid)}",
        f"hidden={'true' if w.hidden else 'false'}",
        "",
        "[wifi-security]",
        "key-mgmt=wpa-psk",
        f"psk={_keyfile_value(w.psk)}",
        "",
        "[ipv4]",
        "method=auto",
        "",
        "[ipv6]",
        "addr-gen-mode=default",
        "method=auto",
        "",
    ]
    return "\n".join(lines).encode()


def firstboot_unit() -> bytes:
    return (
        "[Unit]\n"
        "Description=bitchat-node first boot: agent user, venv, identity (agent from the "
        "wheelhouse if not in the image)\n"
        "After=local-fs.target\n"
        "Before=bitchat-node.service\n"
        f"ConditionPathExists=!{PREFIX}/current\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        "RemainAfterExit=yes\n"
        f"ExecStart=/usr/bin/python3 {PREFIX}/bin/bitchat-box firstboot\n\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    ).encode()


def agent_dropin(recipe: Recipe) -> bytes:
    return (
        "# Written by bitchat-fleet image build: the image's data dir and first-boot order.\n"
        "[Unit]\n"
        "After=bitchat-node-firstboot.service\n\n"
        "[Service]\n"
        f"Environment=BITCHAT_DATA_DIR={recipe.data_dir}\n"
        f"ReadWritePaths={recipe.data_dir}\n"
    ).encode()


def agent_unit() -> bytes:
    """The agent's hardened unit, as shipped in the node package."""
    return (importlib.resources.files("node") / "systemd" / "bitchat-node.service").read_bytes()


def firstrun_script(recipe: Recipe) -> bytes:
    """A Raspberry Pi Imager style firstrun.sh: user, SSH keys, locale; then removes itself."""
    keys = "\n".join(recipe.ssh_keys)
    country = recipe.wifi.country if recipe.wifi else ""
    q = shlex.quote
    return f"""#!/bin/bash
# First-boot customisation written by bitchat-fleet image build; removes itself when done.
set +e
NEW_USER={q(recipe.user)}
AUTHORIZED_KEYS={q(keys)}
FIRSTUSER=$(getent passwd 1000 | cut -d: -f1)
if [ -z "$FIRSTUSER" ]; then
  useradd -m -u 1000 -s /bin/bash "$NEW_USER"
elif [ "$FIRSTUSER" != "$NEW_USER" ]; then
  usermod -l "$NEW_USER" "$FIRSTUSER"
  usermod -m -d "/home/$NEW_USER" "$NEW_USER"
  groupmod -n "$NEW_USER" "$FIRSTUSER"
fi
# One usermod for every group the image has (each usermod takes seconds on a slow first boot).
EXTRA_GROUPS=$(getent group {_GROUPS.replace(",", " ")} | cut -d: -f1 | paste -sd, -)
[ -n "$EXTRA_GROUPS" ] && usermod -aG "$EXTRA_GROUPS" "$NEW_USER"
usermod -p '*' "$NEW_USER"
install -d -m 700 -o "$NEW_USER" -g "$NEW_USER" "/home/$NEW_USER/.ssh"
printf '%s\\n' "$AUTHORIZED_KEYS" > "/home/$NEW_USER/.ssh/authorized_keys"
chown "$NEW_USER:$NEW_USER" "/home/$NEW_USER/.ssh/authorized_keys"
chmod 600 "/home/$NEW_USER/.ssh/authorized_keys"
echo "$NEW_USER ALL=(ALL) NOPASSWD: ALL" > /etc/sudoers.d/010_bitchat-nopasswd
chmod 440 /etc/sudoers.d/010_bitchat-nopasswd
sed -i 's/^#\\?PasswordAuthentication.*/PasswordAuthentication no/' /etc/ssh/sshd_config
# Enabling syncs the SysV script too (a minute under emulation): only when it is needed.
systemctl -q is-enabled ssh || systemctl enable ssh
if [ -x /usr/lib/raspberrypi-sys-mods/imager_custom ]; then
  /usr/lib/raspberrypi-sys-mods/imager_custom set_timezone {q(recipe.timezone)}
  /usr/lib/raspberrypi-sys-mods/imager_custom set_keymap {q(recipe.keyboard)}
else
  ln -sf /usr/share/zoneinfo/{q(recipe.timezone)} /etc/localtime
  echo {q(recipe.timezone)} > /etc/timezone
fi
if command -v raspi-config >/dev/null; then
  raspi-config nonint do_change_locale {q(recipe.locale)}
  [ -n {q(country)} ] && raspi-config nonint do_wifi_country {q(country)}
fi
rfkill unblock wifi 2>/dev/null
for f in /boot/firmware /boot; do
  rm -f "$f/firstrun.sh"
  [ -f "$f/cmdline.txt" ] && sed -i 's| systemd.run.*||g' "$f/cmdline.txt"
done
exit 0
""".encode()


def cloud_init_files(recipe: Recipe) -> dict[str, bytes]:
    """user-data, meta-data and network-config for images whose first boot runs cloud-init."""
    runcmd: list[list[str]] = [["systemctl", "enable", "--now", "ssh"]]
    if recipe.wifi is not None:
        runcmd.append(["raspi-config", "nonint", "do_wifi_country", recipe.wifi.country])
    user_data = {
        "preserve_hostname": True,
        "locale": recipe.locale,
        "timezone": recipe.timezone,
        "keyboard": {"layout": recipe.keyboard},
        "ssh_pwauth": False,
        "users": [
            {
                "name": recipe.user,
                "groups": _GROUPS,
                "shell": "/bin/bash",
                "lock_passwd": True,
                "sudo": "ALL=(ALL) NOPASSWD:ALL",
                "ssh_authorized_keys": list(recipe.ssh_keys),
            }
        ],
        "runcmd": runcmd,
    }
    instance = hashlib.sha256(json.dumps(user_data, sort_keys=True).encode()).hexdigest()[:16]
    network = {
        "network": {
            "version": 2,
            "ethernets": {"eth0": {"dhcp4": True, "optional": True}},
        }
    }
    # JSON is valid YAML, and json.dumps quotes every value safely.
    return {
        "meta-data": f"instance-id: bitchat-{instance}\n".encode(),
        "network-config": (json.dumps(network, indent=2, sort_keys=True) + "\n").encode(),
        "user-data": (
            "#cloud-config\n" + json.dumps(user_data, indent=2, sort_keys=True) + "\n"
        ).encode(),
    }


def root_files(recipe: Recipe, wheelhouse: Path, version: str) -> dict[str, _File]:
    """Everything the ext4 root receives, by absolute path."""
    files: dict[str, _File] = {}
    box_src = Path(__file__).with_name("box.py").read_bytes()
    files[f"{PREFIX}/bin/bitchat-box"] = _File(box_src, 0o755)
    # Wheels, and source distributions of dependencies without an aarch64 wheel (built on
    # first boot).
    dists = [p for p in wheelhouse.iterdir() if p.name.endswith((".whl", ".tar.gz", ".zip"))]
    for dist in sorted(dists):
        files[f"{PREFIX}/wheelhouse/{dist.name}"] = _File(dist.read_bytes())
    files[f"{ETC}/box.env"] = _File(
        _env_file(
            {
                "BITCHAT_PREFIX": PREFIX,
                "BITCHAT_DATA_DIR": recipe.data_dir,
                "BITCHAT_HOSTNAME": recipe.hostname,
                "BITCHAT_VERSION": version,
                "BITCHAT_USER": "bitchat",
            }
        )
    )
    files[f"{PREFIX}/venv/pyvenv.cfg"] = _File(venv_config(recipe.python_version))
    files[f"{ETC}/enrollment.token"] = _File(recipe.enrollment_token.encode() + b"\n", 0o600)
    files["/etc/systemd/system/bitchat-node.service"] = _File(agent_unit())
    files["/etc/systemd/system/bitchat-node.service.d/10-image.conf"] = _File(agent_dropin(recipe))
    files["/etc/systemd/system/bitchat-node-firstboot.service"] = _File(firstboot_unit())
    if recipe.config is not None:
        files[f"{recipe.data_dir}/config.toml"] = _File(recipe.config.read_bytes(), 0o600)
    if recipe.wifi is not None:
        files["/etc/NetworkManager/system-connections/bitchat-wifi.nmconnection"] = _File(
            nmconnection(recipe), 0o600
        )
    return files


def venv_config(python_version: str) -> bytes:
    """pyvenv.cfg of the agent's venv (the box's system Python, without its packages).

    With VENV_SYMLINKS this is all ``python3 -m venv --without-pip`` makes that the agent uses;
    written here, first boot does not run it.
    """
    return (
        "home = /usr/bin\n"
        "include-system-site-packages = false\n"
        f"version = {python_version}\n"
        f"executable = /usr/bin/python{python_version}\n"
    ).encode()


def venv_symlinks(python_version: str) -> dict[str, str]:
    return {
        f"{PREFIX}/venv/bin/python3": "/usr/bin/python3",
        f"{PREFIX}/venv/bin/python": "python3",
        f"{PREFIX}/venv/bin/python{python_version}": "python3",
        f"{PREFIX}/venv/lib64": "lib",
    }


ROOT_SYMLINKS = {
    "/etc/systemd/system/multi-user.target.wants/bitchat-node.service": (
        "/etc/systemd/system/bitchat-node.service"
    ),
    "/etc/systemd/system/multi-user.target.wants/bitchat-node-firstboot.service": (
        "/etc/systemd/system/bitchat-node-firstboot.service"
    ),
    "/usr/local/bin/bitchat-node": f"{PREFIX}/bin/bitchat-node",
    "/usr/local/bin/bitchat-box": f"{PREFIX}/bin/bitchat-box",
}


# -- FAT side (mtools) -----------------------------------------------------------------------


class Fat:
    """A FAT partition inside an image file, reached through mtools' ``file@@offset``."""

    def __init__(self, image: Path, offset: int, epoch: int) -> None:
        self.target = f"{image}@@{offset}"
        self.env = {
            "MTOOLS_SKIP_CHECK": "1",
            "MTOOLSRC": "/dev/null",
            "SOURCE_DATE_EPOCH": str(epoch),
            "TZ": "UTC",
        }
        self.epoch = epoch

    def names(self) -> set[str]:
        out = _run(
            [_tool("mdir", "mtools"), "-b", "-i", self.target, "::/"],
            self.env,
            "reading the FAT boot partition (mdir)",
        )
        return {line.strip().removeprefix("::/").lower() for line in out.splitlines() if line}

    def read(self, name: str) -> bytes:
        proc = subprocess.run(
            [_tool("mtype", "mtools"), "-i", self.target, f"::/{name}"],
            capture_output=True,
            env={**os.environ, **self.env},
        )
        if proc.returncode != 0:
            raise ImageError(f"cannot read {name} from the boot partition: {proc.stderr!r}")
        return proc.stdout

    def write(self, files: dict[str, bytes], staging: Path) -> None:
        for name, data in sorted(files.items()):
            src = staging / name
            src.write_bytes(data)
            os.utime(src, (self.epoch, self.epoch))
            _run(
                [
                    _tool("mcopy", "mtools"),
                    "-m",
                    "-o",
                    "-D",
                    "o",
                    "-i",
                    self.target,
                    str(src),
                    f"::/{name}",
                ],
                self.env,
                f"writing {name} to the boot partition",
            )


# -- ext4 side (debugfs) ---------------------------------------------------------------------


def _parents(path: str) -> list[str]:
    parts = path.strip("/").split("/")[:-1]
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


def debugfs_script(
    files: dict[str, _File],
    staging: Path,
    symlinks: dict[str, str],
    private_dirs: set[str],
    existing: set[str],
) -> str:
    """A debugfs command file that writes ``files`` (sorted) with exact modes and owners.

    ``existing`` holds the directories already present: debugfs' mkdir on an existing name
    leaves an orphaned inode behind, so those are only re-moded.
    """
    dirs = sorted({d for p in [*files, *symlinks] for d in _parents(p)} | private_dirs)
    lines: list[str] = []
    for d in dirs:
        if d not in existing:
            lines.append(f'mkdir "{d}"')
        mode = 0o700 if d in private_dirs else 0o755
        if d not in existing or d in private_dirs:
            lines.append(f'sif "{d}" mode 0{0o040000 | mode:o}')
    for i, (path, f) in enumerate(sorted(files.items())):
        src = staging / f"f{i:05d}"
        src.write_bytes(f.data)
        lines += [
            f'rm "{path}"',
            f'write "{src}" "{path}"',
            f'sif "{path}" mode 0{0o100000 | f.mode:o}',
            f'sif "{path}" uid {f.uid}',
            f'sif "{path}" gid {f.gid}',
        ]
    for link, target in sorted(symlinks.items()):
        lines += [f'rm "{link}"', f'symlink "{link}" "{target}"']
    return "\n".join(lines) + "\n"


def _replies(output: str) -> list[tuple[str, list[str]]]:
    """Split debugfs -f output into (request, reply lines); debugfs echoes each request."""
    out: list[tuple[str, list[str]]] = []
    for line in output.splitlines():
        if line.startswith("debugfs: "):
            out.append((line[len("debugfs: ") :], []))
        elif out:
            out[-1][1].append(line)
    return out


def existing_dirs(image: Path, offset: int, paths: list[str], staging: Path) -> set[str]:
    """Which of ``paths`` already exist in the ext4 filesystem."""
    if not paths:
        return set()
    cmd_file = staging / "probe.cmds"
    cmd_file.write_text("".join(f'stat "{p}"\n' for p in paths))
    proc = subprocess.run(
        [_tool("debugfs", "e2fsprogs"), "-f", str(cmd_file), f"{image}?offset={offset}"],
        capture_output=True,
        text=True,
    )
    found = set()
    for request, reply in _replies(proc.stdout + "\n" + proc.stderr):
        path = request.removeprefix("stat ").strip('"')
        if any(line.startswith("Inode:") for line in reply):
            found.add(path)
    return found


def run_debugfs(image: Path, offset: int, script: str, staging: Path, epoch: int) -> None:
    cmd_file = staging / "debugfs.cmds"
    cmd_file.write_text(script)
    out = _run(
        [_tool("debugfs", "e2fsprogs"), "-w", "-f", str(cmd_file), f"{image}?offset={offset}"],
        {"E2FSPROGS_FAKE_TIME": str(epoch), "TZ": "UTC"},
        "editing the ext4 root partition (debugfs)",
    )
    # debugfs exits 0 even when a request fails: check every request's reply.
    request = ""
    for line in out.splitlines():
        if line.startswith("debugfs: "):
            request = line[len("debugfs: ") :]
            continue
        tolerated = (request.startswith("mkdir") and "exists" in line) or request.startswith("rm ")
        if not tolerated and _DEBUGFS_ERRORS.search(line):
            raise ImageError(f"debugfs request {request!r} failed on the root partition: {line}")


def check_ext4(image: Path, offset: int) -> None:
    out = _run(
        [_tool("debugfs", "e2fsprogs"), "-R", "stats", f"{image}?offset={offset}"],
        {},
        "reading the ext4 root partition",
    )
    if "Filesystem features:" not in out:
        raise ImageError("partition 2 does not hold an ext4 filesystem")
    if "needs_recovery" in out:
        raise ImageError(
            "the root filesystem's journal needs recovery: the base image was not cleanly "
            "unmounted; run e2fsck on it first"
        )


# -- the build -------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(4 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def choose_first_boot(recipe: Recipe, boot_names: set[str]) -> str:
    if recipe.first_boot != "auto":
        return recipe.first_boot
    return "cloud-init" if {"user-data", "meta-data"} & boot_names else "firstrun"


def build(
    base: Path,
    recipe: Recipe,
    out: Path,
    *,
    wheelhouse: Path | None = None,
    log: Progress = lambda _msg: None,
) -> BuildResult:
    """Build ``out`` (plus .sha256 and .bmap) from ``base`` as ``recipe`` says."""
    started = time.monotonic()
    epoch = source_date_epoch()
    if not base.is_file():
        raise ImageError(f"base image {base} does not exist")
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with tempfile.TemporaryDirectory(prefix=".bitchat-image-", dir=out.parent) as tmp:
        staging = Path(tmp)
        house = wheelhouse or recipe.wheelhouse
        if house is None:
            house = auto_wheelhouse(recipe.python_version, log, staging / "wheelhouse")
        version = wheel_version(house)
        log(f"unpacking {base}")
        size = unpack(base, part)
        with part.open("rb") as fh:
            parts = mbr.parse_mbr(fh.read(mbr.SECTOR), size)
        boot, root = mbr.pi_layout(parts)
        fat = Fat(part, boot.offset, epoch)
        mode = choose_first_boot(recipe, fat.names())
        check_ext4(part, root.offset)
        boot_files: dict[str, bytes] = {"ssh": b""}
        if mode == "cloud-init":
            boot_files.update(cloud_init_files(recipe))
        else:
            # Bookworm mounts the boot partition on /boot/firmware, older releases on /boot.
            firmware = existing_dirs(part, root.offset, ["/boot/firmware"], staging)
            mount = "/boot/firmware" if firmware else "/boot"
            cmdline = fat.read("cmdline.txt").decode(errors="replace").strip()
            if "systemd.run=" not in cmdline:
                cmdline = f"{cmdline} {_FIRSTRUN_ARGS.format(boot=mount)}".strip()
            boot_files["cmdline.txt"] = (cmdline + "\n").encode()
            boot_files["firstrun.sh"] = firstrun_script(recipe)
        log(f"writing {len(boot_files)} files to the boot partition ({mode})")
        fat.write(boot_files, staging)
        files = root_files(recipe, house, version)
        log(f"installing bitchat-node {version} for aarch64 / Python {recipe.python_version}")
        tree = preinstall(house, version, recipe.python_version, staging / "release", log)
        if tree is not None:
            files.update(release_files(tree, version))
        log(f"writing {len(files)} files to the root partition")
        links = {**ROOT_SYMLINKS, **venv_symlinks(recipe.python_version)}
        wanted = sorted({d for p in [*files, *links] for d in _parents(p)} | {recipe.data_dir})
        existing = existing_dirs(part, root.offset, wanted, staging)
        script = debugfs_script(files, staging, links, {recipe.data_dir}, existing)
        run_debugfs(part, root.offset, script, staging, epoch)
    log("hashing and mapping")
    block_map, digest = bmapmod.create_with_digest(part)
    bmap_path = out.with_name(out.name + ".bmap")
    bmap_path.write_text(bmapmod.render(block_map))
    out.with_name(out.name + ".sha256").write_text(f"{digest}  {out.name}\n")
    part.replace(out)
    return BuildResult(
        image=out,
        sha256=digest,
        bmap=bmap_path,
        first_boot=mode,
        size=size,
        mapped_bytes=sum(block_map.byte_span(r)[1] for r in block_map.ranges),
        seconds=time.monotonic() - started,
        files={"boot": sorted(boot_files), "root": sorted([*files, *links])},
        preinstalled=tree is not None,
    )
