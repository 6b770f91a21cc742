"""Every bitchat-fleet command has help text and is documented in docs/fleet.md."""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from provisioning import recipe
from provisioning.cli import main

DOCS = (Path(__file__).resolve().parents[2] / "docs" / "fleet.md").read_text()
MINE = ["image build", "flash", "discover", "enroll", "status", "upgrade", "forget"]


@pytest.mark.parametrize("command", MINE)
def test_command_has_help_and_docs(command: str) -> None:
    res = CliRunner().invoke(main, [*command.split(), "--help"])
    assert res.exit_code == 0 and "Usage:" in res.output
    assert f"bitchat-fleet {command}" in DOCS or f"`{command}`" in DOCS


def test_every_option_is_documented() -> None:
    group = main
    for command in MINE:
        cmd: click.Command = group
        for part in command.split():
            assert isinstance(cmd, click.Group)
            cmd = cmd.commands[part]
        for param in cmd.params:
            if isinstance(param, click.Option) and param.name not in ("help", "inventory_path"):
                assert any(f"{o} " in DOCS or f"{o}]" in DOCS for o in param.opts), (
                    command,
                    param.opts,
                )


def test_every_recipe_key_is_documented() -> None:
    for section, keys in recipe.SCHEMA.items():
        for key in keys:
            assert f"`{section}.{key}`" in DOCS
