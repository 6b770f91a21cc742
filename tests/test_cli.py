from __future__ import annotations

import json
import stat
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner

from node import __version__, config
from node.cli import main
from tests.support import RunningAgent


def test_version() -> None:
    result = CliRunner().invoke(main, ["version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"bitchat-node {__version__}"


@pytest.mark.parametrize("command", ["init", "run", "status", "version"])
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0
    assert "Usage:" in result.output
    assert len(result.output.splitlines()) > 3


def test_init_creates_private_identity_and_commented_config(tmp_path: Path) -> None:
    box = tmp_path / "box"
    result = CliRunner().invoke(main, ["init", "--data-dir", str(box)])
    assert result.exit_code == 0, result.output
    key = box / "identity.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((box / "admin.token").stat().st_mode) == 0o600
    text = (box / "config.toml").read_text()
    # The rendered file is valid TOML and every key is present (commented) with its default.
    uncommented = "\n".join(
        line[2:] if line.startswith("# ") and " = " in line else line for line in text.splitlines()
    )
    assert config.from_dict(__import__("tomllib").loads(uncommented)) == config.Config()
    token = (box / "admin.token").read_text().strip()
    assert token in result.output


def test_init_refuses_to_overwrite_identity(data_dir: Path) -> None:
    before = (data_dir / "identity.key").read_bytes()
    result = CliRunner().invoke(main, ["init", "--data-dir", str(data_dir)])
    assert result.exit_code == 1
    assert "already holds an identity" in result.output
    assert (data_dir / "identity.key").read_bytes() == before


def test_agent_serves_status(agent: RunningAgent) -> None:
    with urllib.request.urlopen(agent.web + "api/status", timeout=5) as resp:
        doc = json.load(resp)
    assert doc["node_id"] == agent.node_id
    assert doc["version"] == __version__
    assert doc["services"]["transport"]["listen"] == f"{agent.udp[0]}:{agent.udp[1]}"
    with urllib.request.urlopen(agent.web, timeout=5) as resp:
        page = resp.read().decode()
        assert "Content-Security-Policy" in resp.headers
    assert "/static/app.js" in page
    result = CliRunner().invoke(main, ["status", "--data-dir", str(agent.data_dir)])
    assert result.exit_code == 0, result.output
    assert agent.node_id in result.output
    assert agent.stop() == 0
