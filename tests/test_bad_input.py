"""Each bad input gives a one-line error, a non-zero exit code, and damages nothing on disk."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from node import state
from node.cli import fetch_json
from tests.support import RunningAgent, start_agent


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_agent_expect_failure(data_dir: Path, *extra: str) -> str:
    """Start the agent, expect it to refuse; returns its one-line error."""
    result = run_cli(
        "run", "--data-dir", str(data_dir), "--listen", "127.0.0.1:0", "--web", "127.0.0.1:0",
        *extra,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return errors[0]


def snapshot(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "config file is empty"),
        ("[network\nlisten = 1", "invalid TOML"),
        ("[nework]\nlisten = '0.0.0.0:1'\n", "unknown section [nework]"),
        ("[network]\nlisen = '0.0.0.0:1'\n", "[network] lisen: unknown key"),
        ("[network]\nmax_sessions = 'many'\n", "[network] max_sessions: expected an integer"),
        ("[network]\nmax_sessions = 0\n", "out of range, allowed 1 to 65536"),
        ("[network]\nlisten = 'nowhere'\n", "[network] listen: expected HOST:PORT"),
        ("[node]\nlog_level = 'loud'\n", "choose one of 'debug'"),
        ("\xff\xfe", "not UTF-8"),
    ],
)
def test_bad_config_is_refused(data_dir: Path, content: str, expected: str) -> None:
    cfg = data_dir / "config.toml"
    cfg.write_bytes(content.encode("latin-1"))
    before = snapshot(data_dir)
    error = run_agent_expect_failure(data_dir)
    assert expected in error
    assert str(cfg) in error
    assert snapshot(data_dir) == before


def test_world_readable_key_is_refused(data_dir: Path) -> None:
    key = data_dir / "identity.key"
    key.chmod(0o644)
    error = run_agent_expect_failure(data_dir)
    assert "readable by others" in error
    assert f"chmod 600 {key}" in error
    assert stat.S_IMODE(key.stat().st_mode) == 0o644


def test_missing_data_dir_says_to_init(tmp_path: Path) -> None:
    error = run_agent_expect_failure(tmp_path / "nothing")
    assert "bitchat-node init" in error


def test_unreadable_data_dir(data_dir: Path) -> None:
    if os.geteuid() == 0:
        # root reads everything: make it a file instead, which no user can use as a data dir
        target = data_dir.parent / "not-a-dir"
        target.write_text("x")
        assert "is not a directory" in run_agent_expect_failure(target)
        return
    data_dir.chmod(0o000)
    try:
        assert "not readable and writable" in run_agent_expect_failure(data_dir)
    finally:
        data_dir.chmod(0o700)


def test_udp_port_in_use(data_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy:
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        error = run_agent_expect_failure(data_dir, "--listen", f"127.0.0.1:{port}")
    assert f"cannot listen on UDP 127.0.0.1:{port}" in error
    assert "--listen" in error


def test_web_port_in_use(data_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        error = run_agent_expect_failure(data_dir, "--web", f"127.0.0.1:{port}")
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in error


def test_corrupt_state_db_is_set_aside(data_dir: Path) -> None:
    db = data_dir / "state.db"
    db.write_bytes(b"this is not an sqlite database" * 100)
    before = db.read_bytes()
    running = start_agent(data_dir)
    try:
        status = fetch_json(running.web.rstrip("/") + "/api/status")
    finally:
        running.stop()
    assert status["node_id"] == running.node_id
    (aside,) = data_dir.glob("state.db.corrupt-*")
    assert aside.read_bytes() == before
    state.check_integrity(db)


def test_second_agent_on_same_data_dir(agent: RunningAgent) -> None:
    error = run_agent_expect_failure(agent.data_dir)
    assert "another agent is already running" in error
    assert agent.process.poll() is None


def test_missing_config_file_option(data_dir: Path) -> None:
    error = run_agent_expect_failure(data_dir, "--config", str(data_dir / "nope.toml"))
    assert "does not exist" in error


def test_bad_listen_option(data_dir: Path) -> None:
    error = run_agent_expect_failure(data_dir, "--listen", "127.0.0.1:99999")
    assert "command line: [network] listen: port must be 0-65535" in error


def test_status_when_not_running(data_dir: Path) -> None:
    result = run_cli("status", "--data-dir", str(data_dir))
    assert result.returncode == 3
    assert "not running" in result.stdout


def test_agent_restarts_after_bad_config_is_fixed(data_dir: Path) -> None:
    (data_dir / "config.toml").write_text("[network]\nmax_sessions = -1\n")
    run_agent_expect_failure(data_dir)
    (data_dir / "config.toml").write_text("[network]\nmax_sessions = 10\n")
    running = start_agent(data_dir)
    assert running.stop() == 0
