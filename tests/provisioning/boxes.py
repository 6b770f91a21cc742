"""Boxes for fleet tests: one real sshd each, with a real agent behind ``bitchat-box``.

Each box is a temp dir laid out like an installed image (PREFIX with a wheelhouse and
releases, a data dir, /etc/bitchat-node) and its own sshd on a free loopback port. Its
environment (sshd SetEnv) points ``bitchat-box`` at that dir; ``restart.sh`` stands in for
``systemctl restart`` and runs ``PREFIX/bin/bitchat-node run`` as a daemon. A box made to fail
gets a ``broken_version`` file: the agent of that version is started with a missing config, so
it exits at once, as a bad release would.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from provisioning import box as boxmod
from tests.support import require_binary

BOX_PY = Path(boxmod.__file__)
TOKEN = "enroll-0123456789abcdef"

RESTART_SH = """#!/bin/sh
# Stands in for 'systemctl restart bitchat-node' on a test box.
BOX={box}
PREFIX=$BOX/opt
if [ -f "$BOX/agent.pid" ]; then
  pid=$(cat "$BOX/agent.pid")
  kill "$pid" 2>/dev/null
  n=0
  while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
  kill -9 "$pid" 2>/dev/null
  rm -f "$BOX/agent.pid"
fi
extra=""
current=$(basename "$(readlink "$PREFIX/current")")
if [ -f "$BOX/broken_version" ] && [ "$current" = "$(cat "$BOX/broken_version")" ]; then
  extra="--config $BOX/missing-config.toml"
fi
setsid "$PREFIX/bin/bitchat-node" run --listen 127.0.0.1:0 --web 127.0.0.1:0 $extra \\
  >> "$BOX/agent.log" 2>&1 < /dev/null &
echo $! > "$BOX/agent.pid"
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class FakeBox:
    root: Path
    port: int
    authorized_keys: Path
    sshd: subprocess.Popen[bytes] | None = None

    @property
    def spec(self) -> str:
        return f"root@127.0.0.1:{self.port}"

    @property
    def id(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def prefix(self) -> Path:
        return self.root / "opt"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def env(self) -> dict[str, str]:
        return {
            "BITCHAT_PREFIX": str(self.prefix),
            "BITCHAT_DATA_DIR": str(self.data_dir),
            "BITCHAT_ETC": str(self.root / "etc"),
            "BITCHAT_PYTHON": sys.executable,
            "BITCHAT_PIP_OPTS": "--no-deps --no-compile",
            "BITCHAT_RESTART": str(self.root / "restart.sh"),
            "BITCHAT_USER": "",
            "BITCHAT_HOSTNAME": "",
            "BITCHAT_VERSION": "0.1.0",
            "PATH": f"{self.root / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        }

    def box(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run bitchat-box locally with this box's environment (setup and assertions)."""
        return subprocess.run(
            [str(self.root / "bin" / "bitchat-box"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )

    def host_key_setup(self) -> None:
        keygen = require_binary("ssh-keygen", "openssh-client")
        key = self.root / "ssh_host_ed25519_key"
        for p in (key, key.with_suffix(".pub")):
            p.unlink(missing_ok=True)
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)

    def write_sshd_config(self) -> Path:
        env = " ".join(f'"{k}={v}"' for k, v in self.env.items())
        cfg = self.root / "sshd_config"
        cfg.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\n"
            f"HostKey {self.root / 'ssh_host_ed25519_key'}\n"
            f"PidFile {self.root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {self.authorized_keys}\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "Subsystem sftp internal-sftp\nLogLevel ERROR\nMaxStartups 100\nMaxSessions 50\n"
            f"SetEnv {env}\n"
        )
        return cfg

    def start_sshd(self) -> None:
        sshd = require_binary("sshd", "openssh-server")
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        cfg = self.write_sshd_config()
        self.sshd = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(cfg)], stderr=(self.root / "sshd.log").open("ab")
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.sshd.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("sshd did not start listening")

    def stop_sshd(self) -> None:
        if self.sshd is not None and self.sshd.poll() is None:
            self.sshd.terminate()
            self.sshd.wait(10)

    def rekey(self) -> None:
        """Give the box a new host key, as re-imaging (or an impostor) would."""
        self.stop_sshd()
        self.host_key_setup()
        self.start_sshd()

    def agent_pid(self) -> int | None:
        try:
            pid = int((self.root / "agent.pid").read_text())
            os.kill(pid, 0)
            return pid
        except (OSError, ValueError):
            return None

    def stop_agent(self) -> None:
        pid = self.agent_pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)

    def install(
        self, wheelhouse: Path, template: Path | None = None, *, agent: bool = True
    ) -> None:
        """As first boot on an image does: wheelhouse, release 0.1.0, identity; then start.

        ``template``, an installed release dir of another box, saves the pip run.
        """
        for d in ("bin", "etc", "opt/wheelhouse"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy(BOX_PY, self.root / "bin" / "bitchat-box")
        (self.root / "bin" / "bitchat-box").chmod(0o755)
        (self.root / "bin" / "bitchat-node").symlink_to(self.prefix / "bin" / "bitchat-node")
        (self.root / "etc" / "enrollment.token").write_text(TOKEN + "\n")
        restart = self.root / "restart.sh"
        restart.write_text(RESTART_SH.format(box=self.root))
        restart.chmod(0o755)
        for wheel in wheelhouse.glob("*.whl"):
            shutil.copy(wheel, self.prefix / "wheelhouse")
        if template is not None:
            shutil.copytree(template, self.prefix / "releases" / template.name, symlinks=True)
        self.box("firstboot")
        if agent:
            self.box("activate", "0.1.0")
            self.box("health", "0.1.0", "30")


def start_boxes(
    base: Path, count: int, wheelhouse: Path, operator_pub: Path, *, agents: bool = True
) -> list[FakeBox]:
    base.mkdir(parents=True, exist_ok=True)
    authorized = base / "authorized_keys"
    authorized.write_text(operator_pub.read_text())
    boxes = [FakeBox(base / f"box{i}", free_port(), authorized) for i in range(count)]

    def bring_up(b: FakeBox) -> None:
        b.root.mkdir(parents=True)
        b.host_key_setup()
        template = None if b is boxes[0] else boxes[0].prefix / "releases" / "0.1.0"
        b.install(wheelhouse, template, agent=agents)
        b.start_sshd()

    try:
        bring_up(boxes[0])
        with ThreadPoolExecutor(max_workers=min(count, 8)) as pool:
            list(pool.map(bring_up, boxes[1:]))
    except BaseException:
        stop_boxes(boxes)
        raise
    return boxes


def stop_boxes(boxes: list[FakeBox]) -> None:
    for b in boxes:
        b.stop_agent()
        b.stop_sshd()
