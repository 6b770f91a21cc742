"""``bitchat-fleet``: the operator's command line (thin over library calls)."""

from __future__ import annotations

from typing import Any

import click

from provisioning import __version__
from provisioning.errors import FleetError
from provisioning.relay.cli import relay


class _Group(click.Group):
    """Turns FleetError into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FleetError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="bitchat-fleet")
def main() -> None:
    """Build SD images, flash them, and enroll, upgrade and watch fleets of boxes."""


@main.command()
def version() -> None:
    """Print the fleet tools' version."""
    click.echo(f"bitchat-fleet {__version__}")


main.add_command(relay)
