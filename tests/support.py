"""Helpers shared by tests: real components that must exist under CI, and a running agent."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip on a developer machine; fail under CI, where every real component must be there."""
    if IN_CI:
        pytest.fail(f"CI must run this test for real: {reason}", pytrace=False)
    pytest.skip(reason)


def require_binary(name: str, package: str) -> str:
    """Path of ``name``, else skip (fail in CI) naming the Debian package that provides it."""
    path = shutil.which(name) or next(
        (p for d in ("/usr/sbin", "/sbin") if os.access(p := f"{d}/{name}", os.X_OK)), None
    )
    if path is None:
        missing(f"{name} not found; install Debian package {package} (scripts/setup.sh --test)")
    assert path is not None
    return path


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        missing(f"{what} needs root")


@dataclass
class RunningAgent:
    """A real ``bitchat-node run`` process on ephemeral ports."""

    process: subprocess.Popen[str]
    data_dir: Path
    web: str
    udp: tuple[str, int]
    node_id: str
    log_path: Path
    """The agent's stderr (its structured log), written to a file so it never blocks."""

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def start_agent(
    data_dir: Path, extra: Sequence[str] = (), timeout: float = 20.0, prefix: Sequence[str] = ()
) -> RunningAgent:
    """Start the agent as a subprocess and wait until it prints its URLs. ``prefix`` runs it
    under another command (``ip netns exec NS`` puts it in a lab namespace)."""
    cmd = [
        *prefix, sys.executable, "-m", "node", "run", "--data-dir", str(data_dir),
        "--listen", "127.0.0.1:0", "--web", "127.0.0.1:0", *extra,
    ]  # fmt: skip
    log_path = data_dir.parent / f"{data_dir.name}-agent.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=log, text=True, start_new_session=True
        )
    assert proc.stdout is not None
    lines: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            code = proc.wait()
            tail = log_path.read_text(errors="replace").strip()[-2000:]
            raise RuntimeError(f"agent exited with {code}: {tail}")
        if m := re.match(r"(\w+): (\S+)", line.strip()):
            lines[m.group(1)] = m.group(2)
        if m := re.search(r"node id (\w+)", line):
            lines["node_id"] = m.group(1)
        if "udp" in lines and "dashboard" in lines:
            # keep draining stdout: a full pipe would block the agent's event loop
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            host, port = lines["udp"].rsplit(":", 1)
            return RunningAgent(proc, data_dir, lines["dashboard"], (host, int(port)),
                                lines.get("node_id", ""), log_path)  # fmt: skip
    proc.kill()
    raise RuntimeError("agent did not become ready in time")
