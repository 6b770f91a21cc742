"""The overlay service on real transport endpoints over loopback UDP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from node import config, state
from node.agent import AgentContext
from node.events import EventLog
from node.identity import Identity
from node.overlay.service import OverlayService
from node.transport.service import TransportService


async def _node(tmp: Path, index: int, bootstrap: tuple[str, ...]) -> AgentContext:
    net = {"listen": "127.0.0.1:0", "bootstrap": list(bootstrap)}
    cfg = config.override(config.Config(), "network", **net)
    cfg = config.override(cfg, "overlay", rpc_timeout_s=2.0)
    data = tmp / f"n{index}"
    data.mkdir()
    ctx = AgentContext(
        data, cfg, Identity.generate(), state.open_state(data / "state.db"), EventLog()
    )
    transport = TransportService(ctx)
    ctx.services["transport"] = transport
    await transport.start()
    overlay = OverlayService(ctx)
    ctx.services["overlay"] = overlay
    await overlay.start()
    return ctx


@pytest.fixture
async def swarm(tmp_path: Path) -> AsyncIterator[list[AgentContext]]:
    first = await _node(tmp_path, 0, ())
    seed = first.urls["listen"]
    nodes = [first] + [await _node(tmp_path, i, (seed,)) for i in range(1, 6)]
    tasks = []
    for ctx in nodes:
        for name in ("transport", "overlay"):
            tasks.append(asyncio.create_task(ctx.services[name].run()))
    try:
        yield nodes
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ctx in nodes:
            ctx.db.conn.close()


def overlay(ctx: AgentContext) -> OverlayService:
    svc = ctx.services["overlay"]
    assert isinstance(svc, OverlayService)
    return svc


async def test_join_provide_and_find_providers(swarm: list[AgentContext]) -> None:
    await asyncio.wait_for(asyncio.gather(*(overlay(c).bootstrapped.wait() for c in swarm[1:])), 60)
    # a second self-lookup after everyone joined spreads the contacts
    for ctx in swarm:
        await overlay(ctx).find_node(ctx.identity.node_id)
    key = bytes(range(32))
    await overlay(swarm[3]).provide(key)
    found = await overlay(swarm[5]).find_providers(key)
    assert [r.node_id for r in found] == [swarm[3].identity.node_id]
    assert found[0].addresses == (swarm[3].urls["listen"],)
    closest = await overlay(swarm[1]).closest_nodes(key, 3)
    ids = {c.identity.node_id for c in swarm}
    assert len(closest) == 3 and {r.node_id for r in closest} <= ids
    target = swarm[4].identity.node_id
    record = await overlay(swarm[2]).find_node(target)
    assert record is not None and record.public_key == swarm[4].identity.public_key
    peers = overlay(swarm[0]).storage_peers()
    assert swarm[1].urls["listen"] in {f"{h}:{p}" for h, p in peers}
    status = overlay(swarm[0]).status()
    assert status["contacts"] >= 4 and status["rejected"] == 0


async def test_contacts_survive_a_restart(swarm: list[AgentContext]) -> None:
    await asyncio.wait_for(overlay(swarm[1]).bootstrapped.wait(), 60)
    svc = overlay(swarm[1])
    svc._save_contacts()
    again = OverlayService(swarm[1])
    await again.start()
    assert again.core is not None and len(again.core.table) >= 1


async def test_the_service_clock_refuses_expired_records(tmp_path: Path) -> None:
    import time

    from node.overlay import wire
    from node.overlay.records import sign_record

    ctx = await _node(tmp_path, 0, ())
    svc = overlay(ctx)
    assert svc.core is not None
    try:
        for expires, kept in ((int(time.time()) - 10, False), (int(time.time()) + 600, True)):
            ident = Identity.generate()
            rec = sign_record(ident, addresses=("192.0.2.1:9",), nat_class="", seq=1,
                              expires=expires)  # fmt: skip
            ping = wire.encode(wire.Message(wire.MsgType.PING, 1, sender=rec))
            svc.core.handle_request(ident.node_id, ping, svc._now())
            assert (svc.core.table.get(ident.node_id) is not None) is kept
    finally:
        await ctx.services["transport"].endpoint.close()  # type: ignore[attr-defined]
        ctx.db.conn.close()
