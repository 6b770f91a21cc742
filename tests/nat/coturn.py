"""coturn's ``turnserver`` as a real STUN server for tests (started and stopped by the tests)."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from node.transport.nat import stun
from tests.support import require_binary


def free_udp_port_pair(host: str = "127.0.0.1") -> int:
    """A UDP port p such that p and p+1 are both free on ``host`` (coturn's alternate port)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a:
            a.bind((host, 0))
            port = a.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
                try:
                    b.bind((host, port + 1))
                except OSError:
                    continue
            return int(port)
    raise RuntimeError("no free UDP port pair")


def _answers(addr: tuple[str, int]) -> bool:
    req = stun.encode(stun.binding_request(bytes(12)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(0.2)
        s.sendto(req, addr)
        try:
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    return stun.is_stun(data)


@dataclass
class Coturn:
    process: subprocess.Popen[bytes]
    ips: tuple[str, ...]
    port: int

    @property
    def address(self) -> tuple[str, int]:
        return self.ips[0], self.port


@contextlib.contextmanager
def run_coturn(
    tmp: Path, ips: tuple[str, ...] = ("127.0.0.1",), netns: str | None = None
) -> Iterator[Coturn]:
    """Run ``turnserver --stun-only`` on ``ips``; with two IPs it serves RFC 5780."""
    binary = require_binary("turnserver", "coturn")
    port = free_udp_port_pair(ips[0]) if netns is None else 3478
    cmd = [
        binary, "-n", "--stun-only", "--no-cli", "--no-tls", "--no-dtls", "--simple-log",
        "--log-file", "stdout", "--pidfile", str(tmp / "turnserver.pid"),
        "--db", str(tmp / "turndb"), "--listening-port", str(port),
        "--alt-listening-port", str(port + 1),
    ]  # fmt: skip
    for ip in ips:
        cmd += ["--listening-ip", ip]
    if netns is not None:
        cmd = ["ip", "netns", "exec", netns, *cmd]
    log = (tmp / "turnserver.log").open("wb")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 15
        while netns is None and not _answers((ips[0], port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"turnserver did not start: {(tmp / 'turnserver.log').read_text()[-1500:]}"
                )
            time.sleep(0.1)
        yield Coturn(proc, ips, port)
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
