"""``bitchat-fleet``: the operator's command line (thin over library calls)."""

from __future__ import annotations

import sys
from pathlib import Path
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


@main.group()
def image() -> None:
    """Build customised Raspberry Pi OS images."""


@image.command("build")
@click.option(
    "--base",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Raspberry Pi OS Lite image (.img, .img.xz, .img.gz or .img.zst).",
)
@click.option(
    "--recipe",
    "recipe_path",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Recipe TOML (see images/recipe.example.toml and docs/fleet.md).",
)
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False),
    help="Image to write; OUT.sha256 and OUT.bmap are written beside it.",
)
@click.option(
    "--wheelhouse",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    help="Directory of wheels to install on the box (overrides agent.wheelhouse).",
)
def image_build(base: Path, recipe_path: Path, output: Path, wheelhouse: Path | None) -> None:
    """Customise BASE as RECIPE says, without mounting anything, into OUTPUT."""
    from provisioning import image as imagemod
    from provisioning import recipe

    result = imagemod.build(
        base,
        recipe.load(recipe_path),
        output,
        wheelhouse=wheelhouse,
        log=lambda msg: click.echo(msg, err=True),
    )
    mapped = result.mapped_bytes / max(result.size, 1)
    click.echo(f"image:      {result.image} ({result.size / 1e6:.1f} MB, {mapped:.0%} mapped)")
    click.echo(f"sha256:     {result.sha256}")
    click.echo(f"block map:  {result.bmap}")
    click.echo(f"first boot: {result.first_boot}")
    click.echo(f"built in {result.seconds:.1f} s")


@main.command()
@click.argument("image_path", metavar="IMAGE", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("device", type=click.Path(path_type=Path))
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--force-non-removable",
    is_flag=True,
    help="Allow a disk that is not removable media (never the system disk or a mounted one).",
)
def flash(image_path: Path, device: Path, yes: bool, force_non_removable: bool) -> None:
    """Write IMAGE to DEVICE (a whole disk, or a file), then read it back and compare."""
    from provisioning import flash as flashmod

    target, refuse, forceable = flashmod.inspect(device)
    if not refuse and not (forceable and not force_non_removable) and not yes:
        click.confirm(
            f"Erase everything on {target.description} and write {image_path}?", abort=True
        )
    bars: dict[str, Any] = {}

    def progress(phase: str, done: int, total: int) -> None:
        bar = bars.get(phase)
        if bar is None:
            for other in bars.values():
                other.render_finish()
            bar = bars[phase] = click.progressbar(
                length=max(total, 1), label=f"{phase:7}", file=sys.stderr
            )
        bar.update(done - bar.pos)

    try:
        result = flashmod.flash(
            image_path, device, force_non_removable=force_non_removable, progress=progress
        )
    finally:
        for bar in bars.values():
            bar.render_finish()
    rate = result.image_size / max(result.write_seconds, 1e-9) / 1e6
    click.echo(f"wrote {result.target.description}")
    click.echo(
        f"  {result.written / 1e6:.1f} MB written of a {result.image_size / 1e6:.1f} MB image"
        f"{' (block map)' if result.bmap_used else ''} in {result.write_seconds:.1f} s "
        f"({rate:.0f} MB/s)"
    )
    click.echo(f"  read back and verified in {result.verify_seconds:.1f} s, sha256 {result.sha256}")
