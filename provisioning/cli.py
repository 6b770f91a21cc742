"""``bitchat-fleet``: the operator's command line (thin over library calls)."""

from __future__ import annotations

import sys
from collections.abc import Callable
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
    where = "installed in the image" if result.preinstalled else "installed on first boot"
    click.echo(f"agent:      {where}")
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
    how = f", sha256 {result.sha256}" if result.sha256 else ", identical to the image"
    click.echo(f"  read back and verified in {result.verify_seconds:.1f} s{how}")


def fleet_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--inventory``, ``--user`` and ``--identity``, shared by the commands that use SSH."""
    func = click.option(
        "-i",
        "--identity",
        type=click.Path(path_type=Path, dir_okay=False, exists=True),
        help="SSH private key (default: ssh-agent and ~/.ssh/id_*).",
    )(func)
    func = click.option(
        "--user", default="pi", show_default=True, help="SSH login for hosts given without user@."
    )(func)
    return inventory_option(func)


def inventory_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--inventory",
        "inventory_path",
        type=click.Path(path_type=Path, dir_okay=False),
        help="Inventory database (default: ~/.local/share/bitchat-fleet/inventory.db).",
    )(func)


def _inventory(path: Path | None) -> Any:
    from provisioning.inventory import Inventory, default_path

    return Inventory(path or default_path())


def _report(results: list[Any]) -> None:
    """Print one line per host; exit 1 when any host failed (after printing all)."""
    for r in results:
        click.echo(("ok    " if r.ok else "FAIL  ") + r.message)
    if any(not r.ok for r in results):
        sys.exit(1)


@main.command()
@click.option("--timeout", default=3.0, show_default=True, help="Seconds to listen.")
@click.option("--all", "show_all", is_flag=True, help="Also list boxes already enrolled.")
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="IP",
    help="Listen only on the interface with this IPv4 address (repeatable; default: all).",
)
@inventory_option
def discover(
    timeout: float, show_all: bool, interfaces: tuple[str, ...], inventory_path: Path | None
) -> None:
    """List boxes announcing _bitchat._tcp on the LAN that are not in the inventory yet."""
    from provisioning.discover import browse

    inv = _inventory(inventory_path)
    known_ids = {b.node_id for b in inv.boxes() if b.node_id}
    known_hosts = {b.host for b in inv.boxes()}
    shown = 0
    for box in browse(timeout, list(interfaces) or None):
        known = box.node_id in known_ids or bool(set(box.addresses) & known_hosts)
        if known and not show_all:
            continue
        shown += 1
        state = "enrolled" if known else "new"
        click.echo(
            f"{state:9} {box.name:24} {' '.join(box.addresses) or '-':18} "
            f"{box.version or '?':10} {box.node_id or '?'}  {box.url}"
            + (f"  ({box.problem})" if box.problem else "")
        )
    if not shown:
        click.echo("no new boxes found" if not show_all else "no boxes found", err=True)


@main.command()
@click.argument("hosts", nargs=-1, required=True)
@click.option(
    "--recipe",
    "recipe_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="The recipe the image was built from (its enrollment token is compared).",
)
@click.option(
    "--token-file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="A file holding the enrollment token (instead of --recipe).",
)
@fleet_options
def enroll(
    hosts: tuple[str, ...],
    recipe_path: Path | None,
    token_file: Path | None,
    inventory_path: Path | None,
    user: str,
    identity: Path | None,
) -> None:
    """Enroll HOSTS ([user@]host[:port]): pin host keys, check the token, record node ids."""
    from provisioning import fleet, recipe
    from provisioning.remote import SshOptions, parse_host

    if (recipe_path is None) == (token_file is None):
        raise FleetError("give exactly one of --recipe or --token-file for the enrollment token")
    if recipe_path is not None:
        token = recipe.load(recipe_path).enrollment_token
    else:
        assert token_file is not None
        token = token_file.read_text().strip()
    specs = [parse_host(h, user) for h in hosts]
    opts = SshOptions(user=user, identity_file=identity)
    _report(fleet.enroll(_inventory(inventory_path), specs, token, opts))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array instead of a table.")
@fleet_options
def status(as_json: bool, inventory_path: Path | None, user: str, identity: Path | None) -> None:
    """One table of every enrolled box: reachable, version, node id, earnings, sensors, error."""
    import json

    from provisioning import fleet
    from provisioning.remote import SshOptions

    results = fleet.status(
        _inventory(inventory_path), SshOptions(user=user, identity_file=identity)
    )
    if as_json:
        click.echo(json.dumps([r.data for r in results], indent=2, sort_keys=True))
    else:
        cols = [
            "host",
            "reachable",
            "agent",
            "version",
            "node_id",
            "earnings",
            "temperature_c",
            "disk_free_gb",
            "last_error",
        ]
        heads = [
            "HOST",
            "UP",
            "AGENT",
            "VERSION",
            "NODE ID",
            "EARNED",
            "TEMP C",
            "FREE GB",
            "LAST ERROR",
        ]
        rows = [
            [
                ("yes" if v else "no") if c == "reachable" else ("-" if v is None else str(v))
                for c in cols
                for v in [r.data.get(c)]
            ]
            for r in results
        ]
        for row in rows:
            row[4] = row[4][:12]
        widths = [max([len(h)] + [len(row[i]) for row in rows]) for i, h in enumerate(heads)]
        click.echo("  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip())
        for row in rows:
            click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if not rows:
            click.echo("no boxes enrolled yet (bitchat-fleet enroll HOST…)", err=True)
    if any(not r.ok for r in results):
        sys.exit(1)


@main.command()
@click.option(
    "--wheel",
    required=True,
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="The bitchat_node-VERSION-py3-none-any.whl to roll out.",
)
@click.option(
    "--max-unavailable", default=1, show_default=True, help="Boxes upgraded at once (batch)."
)
@click.option(
    "--max-failed",
    default=0,
    show_default=True,
    help="Failed boxes tolerated before no further batch is started.",
)
@click.option(
    "--health-timeout", default=60.0, show_default=True, help="Seconds a box has to be healthy."
)
@fleet_options
def upgrade(
    wheel: Path,
    max_unavailable: int,
    max_failed: int,
    health_timeout: float,
    inventory_path: Path | None,
    user: str,
    identity: Path | None,
) -> None:
    """Rolling upgrade of every enrolled box; a box failing its health check is rolled back."""
    from provisioning import fleet
    from provisioning.remote import SshOptions

    report = fleet.upgrade(
        _inventory(inventory_path),
        wheel,
        SshOptions(user=user, identity_file=identity),
        max_unavailable=max_unavailable,
        max_failed=max_failed,
        health_timeout=health_timeout,
    )
    if report.stopped:
        click.echo(f"stopped: more than {max_failed} box(es) failed", err=True)
    _report(report.results)


@main.command()
@click.argument("host")
@inventory_option
def forget(host: str, inventory_path: Path | None) -> None:
    """Remove HOST and its pinned host key from the inventory (e.g. after re-imaging it)."""
    from provisioning.remote import parse_host

    spec = parse_host(host, "pi")
    if _inventory(inventory_path).forget(spec.id):
        click.echo(f"forgot {spec.id}")
    else:
        click.echo(f"{spec.id} is not in the inventory; nothing to forget")
