"""The repo's own rules, checked with the suite: ruff clean, formatted, mypy strict clean, and
every CLI command documented in the README with help text."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from node.cli import main as node_main
from provisioning.cli import main as fleet_main

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/setup.sh --test installs it)")
    return found


@pytest.mark.parametrize(
    "args", [["check", "."], ["format", "--check", "."]], ids=["check", "format"]
)
def test_ruff(args: list[str]) -> None:
    result = subprocess.run([_tool("ruff"), *args], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_mypy_strict() -> None:
    result = subprocess.run([_tool("mypy")], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:]


def _commands(group: click.Group, prefix: str) -> list[tuple[str, click.Command]]:
    found: list[tuple[str, click.Command]] = []
    for name, cmd in group.commands.items():
        full = f"{prefix} {name}"
        found.append((full, cmd))
        if isinstance(cmd, click.Group):
            found.extend(_commands(cmd, full))
    return found


ALL = _commands(node_main, "bitchat-node") + _commands(fleet_main, "bitchat-fleet")


@pytest.mark.parametrize(("name", "command"), ALL, ids=[n for n, _ in ALL])
def test_every_command_has_help_and_is_in_the_readme(name: str, command: click.Command) -> None:
    assert (command.help or "").strip(), f"{name} has no help text"
    readme = (ROOT / "README.md").read_text()
    words = name.split()
    # "bitchat-fleet relay flash" may be written as "relay flash" inside a bitchat-fleet line
    assert " ".join(words[1:]) in readme, f"{name} is not documented in README.md"
