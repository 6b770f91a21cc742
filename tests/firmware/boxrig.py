"""A home box made of the agent's own services in-process, and a relay board process.

The box runs the real transport, NAT, overlay and relays services on one AgentContext (what
``bitchat-node run`` starts, minus storage and hardware); its sockets can be opened inside a
lab namespace. The relay is the firmware's engine under CPython with its real socket code, in
a process of its own (``python -m bench.relay --serve``), optionally inside a namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from lab.routers import Router, ruleset
from node import config, state
from node.agent import AgentContext
from node.events import EventLog
from node.identity import Identity
from node.overlay.service import OverlayService
from node.relays.service import Enrollment, RelaysService
from node.transport.endpoint import Connection, Stream
from node.transport.nat.service import NatService
from node.transport.service import TransportService

Enter = Callable[[], AbstractContextManager[None]]
ECHO = "test-echo"


async def _echo(conn: Connection, stream: Stream) -> None:
    data = await stream.read()
    stream.write(data)
    stream.write_eof()
    await stream.drain()


async def start_node(
    data: Path,
    *,
    listen: str = "127.0.0.1:0",
    relays_listen: str | None = None,
    bootstrap: tuple[str, ...] = (),
    stun: tuple[str, ...] = (),
    enter: Enter = nullcontext,
    **relay_cfg: Any,
) -> AgentContext:
    """Transport, NAT, overlay (and relays when ``relays_listen``) services, started."""
    data.mkdir(parents=True, exist_ok=True)
    cfg = config.override(config.Config(), "network", listen=listen, bootstrap=list(bootstrap))
    cfg = config.override(
        cfg, "nat", port_mapping=False, offer_relay=False, stun_servers=list(stun)
    )
    if relays_listen is not None:
        cfg = config.override(cfg, "relays", listen=relays_listen, **relay_cfg)
    ctx = AgentContext(
        data, cfg, Identity.generate(), state.open_state(data / "state.db"), EventLog()
    )
    services: list[Any] = [TransportService(ctx), NatService(ctx), OverlayService(ctx)]
    if relays_listen is not None:
        services.append(RelaysService(ctx))
    for svc in services:
        ctx.services[svc.name] = svc
        with enter():
            await svc.start()
    transport = ctx.services["transport"]
    assert isinstance(transport, TransportService)
    transport.endpoint.set_handler(ECHO, _echo)
    return ctx


async def stop_node(ctx: AgentContext, tasks: list[asyncio.Task[None]] = ()) -> None:  # type: ignore[assignment]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    relays = ctx.services.get("relays")
    if isinstance(relays, RelaysService) and relays._transport is not None:
        relays._transport.close()
    transport = ctx.services["transport"]
    assert isinstance(transport, TransportService)
    await transport.endpoint.close()
    ctx.db.conn.close()


def relays_of(ctx: AgentContext) -> RelaysService:
    svc = ctx.services["relays"]
    assert isinstance(svc, RelaysService)
    return svc


def nat_of(ctx: AgentContext) -> NatService:
    svc = ctx.services["nat"]
    assert isinstance(svc, NatService)
    return svc


def overlay_of(ctx: AgentContext) -> OverlayService:
    svc = ctx.services["overlay"]
    assert isinstance(svc, OverlayService)
    return svc


@contextlib.contextmanager
def relay_board(
    tmp: Path,
    enrollment: Enrollment,
    bind: str,
    port_base: int,
    popen: Callable[..., subprocess.Popen[bytes]] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """The firmware engine with ``enrollment``'s config, running in a process of its own."""
    path = tmp / f"relay-{enrollment.relay_id}.json"
    doc = {
        "bind": bind,
        "config": {"relay_id": enrollment.relay_id, "key": enrollment.key,
                   "home": enrollment.home, "port_base": port_base},
    }  # fmt: skip
    path.write_text(json.dumps(doc))
    args = ["--serve", str(path)]
    if popen is None:
        proc = subprocess.Popen([sys.executable, "-m", "bench.relay", *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
    else:
        proc = popen(*args, module="bench.relay", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith(b"relay running")
        yield proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def forward_port(router: Router, to: str, port: int) -> None:
    """The owner's port forward of UDP ``port`` to ``to`` (the box's relays port, so relay
    boards elsewhere can register); the router's NAT class is otherwise unchanged."""
    router.ns.nft(ruleset(router.nat, f"10.{router.lan_index}.0.0/16", dnat_accept=True))
    router.ns.nft(
        "table ip owner_fwd\ndelete table ip owner_fwd\ntable ip owner_fwd {\n"
        "  chain pre { type nat hook prerouting priority dstnat; policy accept;\n"
        f'    iifname "wan" udp dport {port} dnat to {to}:{port}\n  }}\n}}\n'
    )


async def until(cond: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        await asyncio.sleep(0.05)


async def echo(conn: Connection, payload: bytes, timeout: float = 15.0) -> bytes:
    """Send ``payload`` on an echo stream of the box and return what came back."""
    stream = await conn.open_stream(ECHO)
    try:
        stream.write(payload)
        stream.write_eof()
        await stream.drain()
        return await asyncio.wait_for(stream.read(), timeout)
    finally:
        stream.close()


@contextlib.asynccontextmanager
async def running(ctx: AgentContext) -> AsyncIterator[list[asyncio.Task[None]]]:
    """The relays service's run loop (offers), stopped on exit."""
    tasks = [asyncio.create_task(relays_of(ctx).run())]
    try:
        yield tasks
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
