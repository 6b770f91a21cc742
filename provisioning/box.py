#!/usr/bin/env python3
"""``bitchat-box``: the box-side helper that the image installs and the fleet tools call.

Standard library only: it runs on the box with the system Python before the agent exists.
Releases live side by side under ``PREFIX/releases/<version>`` (installed by the image build,
or offline from ``PREFIX/wheelhouse`` with ``pip install --target``); ``PREFIX/current`` and
``PREFIX/previous`` are symlinks switched atomically, so an upgrade and its rollback are one
rename each. Settings come from the environment or ``$BITCHAT_ETC/box.env`` (KEY=VALUE lines).

Commands (every one idempotent):
  firstboot           create the agent user, interpreter venv, install (unless the image holds
                      the release) and start the agent
  add-wheel WHEEL     copy a wheel into the wheelhouse and print its version
  install VERSION     install a release from the wheelhouse (no network)
  activate VERSION    make VERSION current (the old one becomes previous) and restart
  rollback            make previous current again and restart
  health VERSION      wait until the agent answers /api/status with VERSION (exit 1 if not)
  facts               print a JSON document: versions, node id, token hash, API, sensors
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_WHEEL = re.compile(r"^bitchat_node-([0-9][0-9A-Za-z.+!-]*?)-py3-none-any\.whl$")
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+!]{0,40}$")
_DEFAULTS = {
    "BITCHAT_PREFIX": "/opt/bitchat-node",
    "BITCHAT_DATA_DIR": "/var/lib/bitchat-node",
    "BITCHAT_USER": "bitchat",
    "BITCHAT_PYTHON": "",
    "BITCHAT_PIP_OPTS": "",
    "BITCHAT_RESTART": "systemctl restart bitchat-node.service",
    "BITCHAT_HOSTNAME": "",
    "BITCHAT_VERSION": "",
}


class BoxError(Exception):
    pass


def settings() -> dict[str, str]:
    """Defaults, overridden by $BITCHAT_ETC/box.env, overridden by the environment."""
    out = dict(_DEFAULTS)
    env_file = Path(os.environ.get("BITCHAT_ETC", "/etc/bitchat-node")) / "box.env"
    if env_file.is_file():
        for line in env_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in out:
                out[key.strip()] = " ".join(shlex.split(value))
    for key in out:
        if key in os.environ:
            out[key] = os.environ[key]
    return out


def _python(cfg: dict[str, str]) -> str:
    return cfg["BITCHAT_PYTHON"] or str(Path(cfg["BITCHAT_PREFIX"]) / "venv" / "bin" / "python")


def _pip_wheel(cfg: dict[str, str]) -> Path | None:
    """The wheelhouse's pip wheel: pip runs from it, so the venv needs no pip of its own
    (installing and byte-compiling one takes minutes on a slow box)."""
    wheels = sorted((Path(cfg["BITCHAT_PREFIX"]) / "wheelhouse").glob("pip-*-py3-none-any.whl"))
    return wheels[-1] if wheels else None


def _pip(cfg: dict[str, str]) -> list[str]:
    wheel = _pip_wheel(cfg)
    return [_python(cfg), f"{wheel}/pip"] if wheel else [_python(cfg), "-m", "pip"]


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise BoxError(f"{shlex.join(cmd[:3])} … failed ({proc.returncode}): {' | '.join(tail)}")


def _link(target: str, link: Path) -> None:
    """Point ``link`` at ``target`` atomically (symlink then rename over the old link)."""
    tmp = link.with_name(f".{link.name}.tmp")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target)
    tmp.replace(link)


def _version_of(link: Path) -> str:
    try:
        return Path(os.readlink(link)).name
    except OSError:
        return ""


def write_launcher(cfg: dict[str, str]) -> Path:
    """``PREFIX/bin/bitchat-node``: runs the current release with the box's interpreter."""
    prefix = Path(cfg["BITCHAT_PREFIX"])
    launcher = prefix / "bin" / "bitchat-node"
    text = (
        "#!/bin/sh\n"
        f': "${{BITCHAT_DATA_DIR:={cfg["BITCHAT_DATA_DIR"]}}}"\n'
        "export BITCHAT_DATA_DIR\n"
        f"PYTHONPATH={shlex.quote(str(prefix / 'current'))} "
        f'exec {shlex.quote(_python(cfg))} -P -m node "$@"\n'
    )
    launcher.parent.mkdir(parents=True, exist_ok=True)
    if not launcher.exists() or launcher.read_text() != text:
        tmp = launcher.with_name(".bitchat-node.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(launcher)
    return launcher


def add_wheel(cfg: dict[str, str], wheel: Path) -> str:
    m = _WHEEL.match(wheel.name)
    if m is None:
        raise BoxError(f"{wheel.name} is not a bitchat_node wheel")
    house = Path(cfg["BITCHAT_PREFIX"]) / "wheelhouse"
    house.mkdir(parents=True, exist_ok=True)
    dest = house / wheel.name
    if wheel.resolve() != dest.resolve():
        shutil.copyfile(wheel, dest.with_name(dest.name + ".part"))
        dest.with_name(dest.name + ".part").replace(dest)
    return m.group(1)


def install(cfg: dict[str, str], version: str) -> Path:
    if not _VERSION.match(version):
        raise BoxError(f"bad version {version!r}")
    prefix = Path(cfg["BITCHAT_PREFIX"])
    release = prefix / "releases" / version
    if (release / ".installed").exists():
        return release
    staging = prefix / "releases" / f".{version}.part"
    shutil.rmtree(staging, ignore_errors=True)
    cmd = [
        *_pip(cfg),
        "install",
        "--quiet",
        "--no-index",
        "--disable-pip-version-check",
        "--find-links",
        str(prefix / "wheelhouse"),
        "--target",
        str(staging),
        *shlex.split(cfg["BITCHAT_PIP_OPTS"]),
        f"bitchat-node=={version}",
    ]
    _run(cmd)
    (staging / ".installed").write_text(version + "\n")
    shutil.rmtree(release, ignore_errors=True)
    staging.rename(release)
    return release


def restart(cfg: dict[str, str]) -> None:
    _run(shlex.split(cfg["BITCHAT_RESTART"]))


def activate(cfg: dict[str, str], version: str, *, restart_agent: bool = True) -> None:
    prefix = Path(cfg["BITCHAT_PREFIX"])
    release = prefix / "releases" / version
    if not (release / ".installed").exists():
        raise BoxError(f"release {version} is not installed; run install {version} first")
    write_launcher(cfg)
    current = _version_of(prefix / "current")
    if current != version:
        if current:
            _link(f"releases/{current}", prefix / "previous")
        _link(f"releases/{version}", prefix / "current")
    if restart_agent:
        restart(cfg)


def rollback(cfg: dict[str, str]) -> str:
    prefix = Path(cfg["BITCHAT_PREFIX"])
    previous = _version_of(prefix / "previous")
    if not previous:
        raise BoxError("no previous release to roll back to")
    current = _version_of(prefix / "current")
    if current != previous:
        _link(f"releases/{previous}", prefix / "current")
        if current:
            _link(f"releases/{current}", prefix / "previous")
    restart(cfg)
    return previous


def _get(url: str) -> Any:
    import urllib.request  # only health and facts need it: first boot does not import it

    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.load(resp)


def _runtime(cfg: dict[str, str]) -> dict[str, Any] | None:
    """What the running agent wrote to DATA_DIR/agent.json (pid, node id, URLs), if it runs."""
    info: dict[str, Any]
    try:
        info = json.loads((Path(cfg["BITCHAT_DATA_DIR"]) / "agent.json").read_text())
        if not isinstance(info, dict):
            return None
        os.kill(int(info["pid"]), 0)
    except PermissionError:
        pass
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return info


def _api_base(cfg: dict[str, str]) -> str | None:
    info = _runtime(cfg)
    return str(info["web"]).rstrip("/") if info and "web" in info else None


def health(cfg: dict[str, str], version: str, timeout: float) -> str:
    """Wait for the agent to answer /api/status with ``version``; the last problem if not."""
    deadline = time.monotonic() + timeout
    problem = "agent not running"
    while True:
        base = _api_base(cfg)
        if base is None:
            problem = "agent not running (no live agent.json in the data dir)"
        else:
            try:
                doc = _get(base + "/api/status")
                got = doc.get("version") if isinstance(doc, dict) else None
                if got == version:
                    return ""
                problem = f"agent answers version {got!r}, expected {version!r}"
            except (OSError, ValueError) as exc:  # URLError is an OSError
                problem = f"/api/status failed: {exc}"
        if time.monotonic() >= deadline:
            return problem
        time.sleep(0.5)


def _node_id(cfg: dict[str, str]) -> str | None:
    """The node id of the identity in the data dir (None without one).

    Deriving it takes a second Python with the agent's code; the answer is cached in
    PREFIX/.node_id, keyed by the identity file's inode, size and mtime.
    """
    key = Path(cfg["BITCHAT_DATA_DIR"]) / "identity.key"
    try:
        st = key.stat()
    except OSError:
        return None
    stamp = f"{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    cache = Path(cfg["BITCHAT_PREFIX"]) / ".node_id"
    with contextlib.suppress(OSError, ValueError):
        cached_stamp, cached_id = cache.read_text().split()
        if cached_stamp == stamp:
            return cached_id
    code = (
        "import sys; from pathlib import Path; from node import identity;"
        "print(identity.load(Path(sys.argv[1]) / identity.KEY_FILE, check_mode=False)"
        ".node_id_text)"
    )
    proc = subprocess.run(
        [_python(cfg), "-P", "-c", code, cfg["BITCHAT_DATA_DIR"]],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(cfg["BITCHAT_PREFIX"]) / "current")},
    )
    if proc.returncode != 0:
        return None
    node_id = proc.stdout.strip()
    with contextlib.suppress(OSError):
        tmp = cache.with_name(".node_id.tmp")
        tmp.write_text(f"{stamp} {node_id}\n")
        tmp.replace(cache)
    return node_id


def facts(cfg: dict[str, str]) -> dict[str, Any]:
    prefix = Path(cfg["BITCHAT_PREFIX"])
    out: dict[str, Any] = {
        "hostname": os.uname().nodename,
        "version": _version_of(prefix / "current") or None,
        "previous": _version_of(prefix / "previous") or None,
        "node_id": None,
        "token_sha256": None,
        "temperature_c": None,
        "disk": None,
        "api": {},
    }
    info = _runtime(cfg)
    # The running agent names its node id; otherwise read the identity (a second Python).
    out["node_id"] = str(info["node_id"]) if info and "node_id" in info else _node_id(cfg)
    token_file = Path(os.environ.get("BITCHAT_ETC", "/etc/bitchat-node")) / "enrollment.token"
    with contextlib.suppress(OSError):
        token = token_file.read_text().strip().encode()
        out["token_sha256"] = hashlib.sha256(token).hexdigest()
    try:
        milli = int(Path("/sys/class/thermal/thermal_zone0/temp").read_text().strip())
        out["temperature_c"] = round(milli / 1000, 1)
    except (OSError, ValueError):
        pass
    data_dir = Path(cfg["BITCHAT_DATA_DIR"])
    try:
        du = shutil.disk_usage(data_dir)
        out["disk"] = {"path": str(data_dir), "total": du.total, "free": du.free}
    except OSError:
        pass
    base = _api_base(cfg)
    if base is not None:
        for path in ("/api/status", "/api/earnings", "/api/hardware", "/api/storage"):
            try:
                out["api"][path] = _get(base + path)
            except (OSError, ValueError):
                continue
    return out


class _Steps:
    """Prints how long each first-boot step took (key=value, to the journal)."""

    def __init__(self) -> None:
        self.last = time.monotonic()

    def __call__(self, name: str, how: str = "") -> None:
        now = time.monotonic()
        extra = f" how={how}" if how else ""
        print(f"firstboot step={name}{extra} seconds={now - self.last:.1f}", flush=True)
        self.last = now


def firstboot(cfg: dict[str, str]) -> None:
    """First boot: agent user, interpreter venv, release, data dir, hostname; then start."""
    prefix = Path(cfg["BITCHAT_PREFIX"])
    user = cfg["BITCHAT_USER"]
    step = _Steps()
    if (
        user
        and shutil.which("useradd")
        and subprocess.run(["id", user], capture_output=True).returncode
    ):
        _run(
            [
                "useradd",
                "--system",
                "--user-group",
                "--home-dir",
                cfg["BITCHAT_DATA_DIR"],
                "--shell",
                "/usr/sbin/nologin",
                user,
            ]
        )
        if subprocess.run(["getent", "group", "gpio"], capture_output=True).returncode == 0:
            _run(["usermod", "-aG", "gpio", user])
    step("user")
    venv = prefix / "venv"
    if not cfg["BITCHAT_PYTHON"] and not (venv / "bin" / "python").exists():
        without_pip = ["--without-pip"] if _pip_wheel(cfg) else []
        _run([sys.executable, "-m", "venv", *without_pip, str(venv)])
    step("venv")
    pattern = cfg["BITCHAT_HOSTNAME"]
    if pattern:
        set_hostname(pattern)
    step("hostname")
    version = cfg["BITCHAT_VERSION"]
    in_image = (prefix / "releases" / version / ".installed").exists()
    install(cfg, version)
    step("install", "in_image" if in_image else "wheelhouse")
    launcher = write_launcher(cfg)
    data_dir = Path(cfg["BITCHAT_DATA_DIR"])
    if not (data_dir / "identity.key").exists():
        _link(f"releases/{version}", prefix / "current")
        _run([str(launcher), "init", "--data-dir", str(data_dir)])
        if os.geteuid() == 0 and user:
            _run(["chown", "-R", f"{user}:{user}", str(data_dir)])
    step("identity")
    # systemd starts the agent after this unit (ordering), so no restart from here.
    activate(cfg, version, restart_agent=False)


def set_hostname(pattern: str) -> str:
    serial = ""
    for src in ("/proc/device-tree/serial-number", "/etc/machine-id"):
        try:
            serial = Path(src).read_text().strip("\x00\n ")
            break
        except OSError:
            continue
    name = pattern.replace("{serial}", (serial[-6:] or "000000").lower())
    if os.uname().nodename != name:
        # What hostnamectl does, without starting systemd-hostnamed (seconds on a slow first
        # boot): the static name in /etc/hostname, the kernel's name now.
        tmp = Path("/etc/.hostname.tmp")
        tmp.write_text(name + "\n")
        tmp.chmod(0o644)
        tmp.replace("/etc/hostname")
        socket.sethostname(name)
        set_hosts_entry(name)
    return name


def set_hosts_entry(name: str, hosts: Path = Path("/etc/hosts")) -> None:
    """Point 127.0.1.1 at the new name, as raspi-config does, so the box resolves itself."""
    try:
        lines = hosts.read_text().splitlines()
    except OSError:
        lines = ["127.0.0.1\tlocalhost"]
    kept = [line for line in lines if not line.startswith("127.0.1.1")]
    hosts.write_text("\n".join([*kept, f"127.0.1.1\t{name}"]) + "\n")


def main(argv: list[str]) -> int:
    cfg = settings()
    cmd, args = (argv[0], argv[1:]) if argv else ("", [])
    try:
        if cmd == "firstboot" and not args:
            firstboot(cfg)
        elif cmd == "add-wheel" and len(args) == 1:
            print(add_wheel(cfg, Path(args[0])))
        elif cmd == "install" and len(args) == 1:
            print(install(cfg, args[0]))
        elif cmd == "activate" and len(args) == 1:
            activate(cfg, args[0])
        elif cmd == "rollback" and not args:
            print(rollback(cfg))
        elif cmd == "health" and len(args) in (1, 2):
            problem = health(cfg, args[0], float(args[1]) if len(args) == 2 else 30.0)
            if problem:
                print(problem, file=sys.stderr)
                return 1
        elif cmd == "facts" and not args:
            print(json.dumps(facts(cfg), sort_keys=True))
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except BoxError as exc:
        print(f"bitchat-box: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
