"""A local network of agents on loopback, and a client workload that keeps it busy.

:class:`Devnet` starts ``n`` real ``bitchat-node run`` processes, each with its own data dir,
ports and a config that names the others as bootstrap peers, with short audit and payment
intervals and devnet prices so that earnings move within a minute. :func:`workload` stores
random files through the other nodes (so the first node, whose dashboard is shown, is paid by
them), downloads and checks them, and lets audits and vouchers run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import NodeError
from node.storage_agent.errors import StorageError
from node.storage_agent.transfer import get_file, put_file

READY_TIMEOUT = 30.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
DEVNET_STORAGE = """
[storage]
price_per_gib_month = 100000000.0
egress_price_per_gib = 2000.0
contract_days = 0.02
audit_interval = 4.0
pay_interval = 5.0
scrub_days = 0.002
disk_check_interval = 2.0
repair_after_offline = 20.0
"""


def storage_config(extra: str) -> str:
    """The devnet's ``[storage]`` section with ``extra`` lines (``key = value``) added; a key
    the devnet already sets takes the value from ``extra``."""
    extra_keys = {line.split("=", 1)[0].strip() for line in extra.splitlines() if "=" in line}
    kept = [
        line
        for line in DEVNET_STORAGE.splitlines()
        if "=" not in line or line.split("=", 1)[0].strip() not in extra_keys
    ]
    return "\n".join(kept) + "\n" + extra


def free_port(host: str = "127.0.0.1") -> int:
    """A port number free for both TCP and UDP on ``host``."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind((host, 0))
            port = int(t.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind((host, port))
                except OSError:
                    continue
            return port
    raise StorageError("no free port pair found on loopback")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the devnet process dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _sigterm_as_exit(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@dataclass
class DevnetNode:
    index: int
    data_dir: Path
    port: int
    web_listen: str
    process: subprocess.Popen[bytes] | None = None
    web: str = ""
    log_path: Path = field(default_factory=Path)

    @property
    def token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Devnet:
    """``n`` agents as separate processes on 127.0.0.1."""

    def __init__(
        self, base: Path, n: int, *, web0: str = "127.0.0.1:0", extra_config: str = ""
    ) -> None:
        self.base = base
        self.extra_config = extra_config
        ports = [free_port() for _ in range(n)]
        self.nodes = [
            DevnetNode(i, base / f"node-{i}", ports[i], web0 if i == 0 else "127.0.0.1:0")
            for i in range(n)
        ]

    def _write_config(self, node: DevnetNode) -> None:
        from node import config
        from node.cli import init_data_dir

        if not (node.data_dir / "identity.key").exists():
            init_data_dir(node.data_dir)
        peers = ", ".join(f'"127.0.0.1:{o.port}"' for o in self.nodes if o is not node)
        text = (
            f'[node]\nname = "devnet-{node.index}"\n\n'
            f'[network]\nlisten = "127.0.0.1:{node.port}"\nbootstrap = [{peers}]\n\n'
            f'[web]\nlisten = "{node.web_listen}"\n' + storage_config(self.extra_config)
        )
        if "relays" in config.Config.__dataclass_fields__:
            text += '\n[relays]\nlisten = "127.0.0.1:0"\n'

        (node.data_dir / "config.toml").write_text(text)

    def start(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            self._write_config(node)
        for node in self.nodes:
            self.start_node(node, wait=False)
        for node in self.nodes:
            self._wait_ready(node)

    def start_node(self, node: DevnetNode, *, wait: bool = True) -> None:
        node.log_path = node.data_dir / "agent.log"
        out_path = node.data_dir / "agent.out"
        with node.log_path.open("ab") as log, out_path.open("wb") as out:
            node.process = subprocess.Popen(
                [sys.executable, "-m", "node", "run", "--data-dir", str(node.data_dir)],
                stdout=out,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        if wait:
            self._wait_ready(node)

    def _wait_ready(self, node: DevnetNode) -> None:
        assert node.process is not None
        out_path = node.data_dir / "agent.out"
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if m := re.search(r"^dashboard: (\S+)$", out_path.read_text(errors="replace"), re.M):
                node.web = m.group(1)
                return
            if node.process.poll() is not None:
                tail = node.log_path.read_text(errors="replace")[-1500:]
                raise StorageError(f"devnet node {node.index} exited: {tail}")
            time.sleep(0.1)
        raise StorageError(f"devnet node {node.index} did not start in {READY_TIMEOUT:.0f} s")

    def wait_peers(self, timeout: float = 90.0) -> bool:
        """Wait until every running node knows every running node; False on timeout."""
        from node.cli import fetch_json

        alive = [n for n in self.nodes if n.alive]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = []
            for n in alive:
                try:
                    doc = fetch_json(n.web.rstrip("/") + "/api/status")
                    counts.append(int(doc["services"]["storage"]["peers"]))
                except (NodeError, KeyError, TypeError, ValueError):
                    counts.append(0)
            if all(c >= len(alive) for c in counts):
                return True
            time.sleep(0.5)
        return False

    def kill(self, node: DevnetNode, sig: int = signal.SIGKILL) -> None:
        if node.process is not None and node.process.poll() is None:
            node.process.send_signal(sig)
            node.process.wait(30)

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.send_signal(signal.SIGTERM)
        for node in self.nodes:
            if node.process is not None:
                try:
                    node.process.wait(15)
                except subprocess.TimeoutExpired:
                    node.process.kill()
                    node.process.wait()

    def __enter__(self) -> Devnet:
        # SIGTERM stops the devnet like Ctrl-C does: the agents are stopped on the way out.
        with contextlib.suppress(ValueError):
            signal.signal(signal.SIGTERM, _sigterm_as_exit)
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def workload(
    net: Devnet,
    *,
    rounds: int | None = None,
    pause: float = 2.0,
    say: Callable[[str], None] = print,
    max_size: int = 3 * 1024 * 1024,
) -> None:
    """Store, fetch and check random files through the devnet until ``rounds`` are done."""
    if not net.wait_peers():
        say("warning: not every node sees every other yet; starting anyway")
    clients = net.nodes[1:] or net.nodes
    work = net.base / "workload"
    work.mkdir(exist_ok=True)
    stored: list[tuple[str, bytes]] = []
    done = 0
    while rounds is None or done < rounds:
        node = clients[done % len(clients)]
        if not node.alive:
            done += 1
            continue
        data = os.urandom(random.randint(64 * 1024, max_size))
        src = work / "upload.bin"
        src.write_bytes(data)
        try:
            file_id = put_file(node.web, src, node.token)
            stored.append((file_id, data))
            say(f"put  {len(data):>8} bytes via node {node.index}: {file_id[:20]}…")
            if stored:
                fid, want = random.choice(stored[-20:])
                out = work / "download.bin"
                get_file(node.web, fid, out, node.token)
                ok = out.read_bytes() == want
                say(
                    f"get  {len(want):>8} bytes via node {node.index}: {'ok' if ok else 'MISMATCH'}"
                )
        except StorageError as exc:
            say(f"error via node {node.index}: {exc}")
        done += 1
        time.sleep(pause)
