"""``bitchat-node``: the command line of the agent (thin over library calls)."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import os
import secrets
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from node import __version__, config, fsutil, identity
from node import log as nodelog
from node.errors import ConfigError, DataDirError, NodeError

DEFAULT_DATA_DIR = Path(os.environ.get("BITCHAT_DATA_DIR", "/var/lib/bitchat-node"))
ADMIN_TOKEN_FILE = "admin.token"

F = TypeVar("F", bound=Callable[..., Any])


def data_dir_option(func: F) -> F:
    """The ``--data-dir`` option shared by every command that touches a box's state."""
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=DEFAULT_DATA_DIR,
        show_default=True,
        help="Where the identity, config, chunks and state.db live ($BITCHAT_DATA_DIR).",
    )(func)


class _Group(click.Group):
    """Turns NodeError into a one-line message and exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except NodeError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="bitchat-node")
def main() -> None:
    """The bitchat mining box agent: stores encrypted chunks, proves it, relays, earns."""


@main.command()
def version() -> None:
    """Print the agent's version."""
    click.echo(f"bitchat-node {__version__}")


def init_data_dir(data_dir: Path) -> tuple[identity.Identity, str]:
    """Create the identity, admin token and commented config; returns (identity, token)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise DataDirError(f"cannot create data dir {data_dir}: {exc.strerror}") from exc
    key_path = data_dir / identity.KEY_FILE
    if key_path.exists():
        raise DataDirError(f"{data_dir} already holds an identity ({key_path}); nothing changed")
    ident = identity.Identity.generate()
    identity.save(ident, key_path)
    token = secrets.token_urlsafe(24)
    fsutil.write(data_dir / ADMIN_TOKEN_FILE, (token + "\n").encode(), mode=0o600)
    cfg_path = data_dir / config.CONFIG_FILE
    if not cfg_path.exists():
        fsutil.write(cfg_path, config.render_default().encode(), mode=0o644)
    return ident, token


@main.command()
@data_dir_option
def init(data_dir: Path) -> None:
    """Create a new box identity, admin token and commented config.toml in DATA_DIR."""
    ident, token = init_data_dir(data_dir)
    click.echo(f"node id:     {ident.node_id_text}")
    click.echo(f"identity:    {data_dir / identity.KEY_FILE} (mode 0600, keep it private)")
    click.echo(f"config:      {data_dir / config.CONFIG_FILE}")
    click.echo(f"admin token: {token}")
    click.echo(
        f"             (stored in {data_dir / ADMIN_TOKEN_FILE}; needed for dashboard actions)"
    )


@main.command()
@data_dir_option
@click.option("--listen", metavar="HOST:PORT", help="UDP address of the transport.")
@click.option("--web", metavar="HOST:PORT", help="HTTP address of the dashboard.")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Config file (default: DATA_DIR/config.toml).",
)
@click.option("--init", "do_init", is_flag=True, help="Initialise DATA_DIR first if it is new.")
def run(
    data_dir: Path, listen: str | None, web: str | None, config_path: Path | None, do_init: bool
) -> None:
    """Run the agent in the foreground until SIGTERM or Ctrl-C."""
    from node.agent import AgentContext, check_data_dir, load_config, run_agent

    if do_init and not (data_dir / identity.KEY_FILE).exists():
        ident, _ = init_data_dir(data_dir)
        click.echo(f"initialised {data_dir} (node id {ident.node_id_text})")
    check_data_dir(data_dir)
    if config_path is not None and not config_path.exists():
        raise ConfigError(f"config file {config_path} does not exist")
    cfg = load_config(data_dir, config_path)
    if listen is not None:
        cfg = config.override(cfg, "network", listen=listen)
    if web is not None:
        cfg = config.override(cfg, "web", listen=web)
    nodelog.setup(cfg.node.log_level)
    # A crash in a C extension then leaves each thread's traceback in the journal.
    faulthandler.enable()

    def ready(ctx: AgentContext) -> None:
        click.echo(f"bitchat-node {__version__} running, node id {ctx.identity.node_id_text}")
        if "web" in ctx.urls:
            click.echo(f"dashboard: {ctx.urls['web']}")
        if "listen" in ctx.urls:
            click.echo(f"udp: {ctx.urls['listen']}")
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_agent(data_dir, cfg, ready=ready))


def fetch_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document; raises NodeError with the reason when the agent cannot be reached."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        raise NodeError(f"{url} answered HTTP {exc.code}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NodeError(f"cannot reach the agent at {url}: {reason}") from exc
    except ValueError as exc:
        raise NodeError(f"{url} did not return JSON") from exc


@main.command()
@data_dir_option
@click.option("--api", metavar="URL", help="Dashboard URL of the agent (default: from DATA_DIR).")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status document.")
def status(data_dir: Path, api: str | None, as_json: bool) -> None:
    """Show whether the agent runs, and its status."""
    from node.agent import read_runtime

    if api is None:
        runtime = read_runtime(data_dir)
        if runtime is None or "web" not in runtime:
            ident = identity.load(data_dir / identity.KEY_FILE, check_mode=False)
            click.echo(f"node id: {ident.node_id_text}")
            click.echo(f"agent:   not running on {data_dir}")
            sys.exit(3)
        api = str(runtime["web"])
    doc = fetch_json(api.rstrip("/") + "/api/status")
    if as_json:
        click.echo(json.dumps(doc, indent=2, sort_keys=True))
        return
    click.echo(f"node id: {doc.get('node_id')}")
    click.echo(f"name:    {doc.get('name')}")
    click.echo(f"version: {doc.get('version')}")
    click.echo(f"uptime:  {doc.get('uptime_s')} s")
    for name, svc in sorted((doc.get("services") or {}).items()):
        click.echo(f"{name}: " + ", ".join(f"{k}={v}" for k, v in svc.items()))


@main.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@click.option(
    "--sysfs-root",
    type=click.Path(path_type=Path, file_okay=False),
    help="Read /sys, /proc and /run under this directory (default: [hwmon] sysfs_root).",
)
def doctor(data_dir: Path, as_json: bool, sysfs_root: Path | None) -> None:
    """Check the box (identity, disk, SMART, heat, power, clock, ports, network); say what to do.

    Prints one line per check with OK, WARN or FAIL; exits 1 when any check fails.
    """
    from node.hwmon.doctor import render, run_checks, to_json

    findings = run_checks(data_dir, sysfs_root)
    click.echo(json.dumps(to_json(findings), indent=2) if as_json else render(findings))
    if any(f.level == "fail" for f in findings):
        sys.exit(1)


def _api_and_token(data_dir: Path, api: str | None, token: str | None) -> tuple[str, str | None]:
    """The agent's dashboard URL and admin token, from options or from DATA_DIR."""
    from node.agent import read_runtime

    if api is None:
        runtime = read_runtime(data_dir)
        if runtime is None or "web" not in runtime:
            raise NodeError(f"no agent is running on {data_dir}; start one or pass --api URL")
        api = str(runtime["web"])
    if token is None:
        with contextlib.suppress(OSError):
            token = (data_dir / ADMIN_TOKEN_FILE).read_text().strip()
    return api, token


def storage_client_options(func: F) -> F:
    """``--api`` and ``--token`` for the commands that talk to a running agent's storage."""
    func = click.option(
        "--token",
        envvar="BITCHAT_TOKEN",
        help="Admin token of the agent (default: DATA_DIR/admin.token; $BITCHAT_TOKEN).",
    )(func)
    func = click.option(
        "--api", metavar="URL", help="Dashboard URL of the agent (default: from DATA_DIR)."
    )(func)
    return data_dir_option(func)


@main.command()
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@storage_client_options
def put(file: Path, data_dir: Path, api: str | None, token: str | None) -> None:
    """Encrypt FILE here and store it in the network through a running agent; prints its id."""
    from node.storage_agent.transfer import put_file

    url, tok = _api_and_token(data_dir, api, token)
    click.echo(put_file(url, file, tok))


@main.command()
@click.argument("file_id")
@click.option(
    "-o", "--output", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
    help="Where to write the file.",
)  # fmt: skip
@storage_client_options
def get(file_id: str, out: Path, data_dir: Path, api: str | None, token: str | None) -> None:
    """Fetch the file FILE_ID from the network through a running agent and decrypt it."""
    from node.storage_agent.transfer import get_file

    url, tok = _api_and_token(data_dir, api, token)
    size = get_file(url, file_id, out, tok)
    click.echo(f"wrote {size} bytes to {out}", err=True)


@main.command()
@click.option("--nodes", default=4, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), required=True,
    help="Directory for the devnet's node data dirs (created if missing).",
)  # fmt: skip
@click.option(
    "--web", default="127.0.0.1:7780", show_default=True, metavar="HOST:PORT",
    help="Dashboard address of the first node (the one the workload pays).",
)  # fmt: skip
@click.option("--rounds", type=int, help="Stop after this many workload rounds.")
def devnet(nodes: int, data_dir: Path, web: str, rounds: int | None) -> None:
    """Run NODES agents on loopback and a workload that stores, audits, fetches and pays."""
    from node.storage_agent.devnet import Devnet, workload

    try:
        config.parse_hostport(web)
    except ValueError as exc:
        raise ConfigError(f"--web: {exc}") from None
    net = Devnet(data_dir, nodes, web0=web)
    click.echo(f"starting {nodes} agents under {data_dir} …")
    with net:
        click.echo(f"dashboard of node 0: {net.nodes[0].web}  (earnings grow as the others pay it)")
        for node in net.nodes[1:]:
            click.echo(f"node {node.index}: {node.web}")
        click.echo("workload running; Ctrl-C stops the devnet")
        with contextlib.suppress(KeyboardInterrupt):
            workload(net, rounds=rounds, say=click.echo)
