"""An agent's transport and NAT services started in-process on loopback, for NAT tests."""

from __future__ import annotations

from node import config
from node.agent import AgentContext
from node.transport.nat.service import NatService
from node.transport.service import TransportService


async def start_nat(ctx: AgentContext, stun_servers: list[str] | None = None) -> AgentContext:
    """Start transport (on 127.0.0.1, any port) and NAT (no port mapping) services on ``ctx``."""
    ctx.config = config.override(ctx.config, "network", listen="127.0.0.1:0")
    nat_keys: dict[str, object] = {"port_mapping": False}
    if stun_servers is not None:
        nat_keys["stun_servers"] = stun_servers
    ctx.config = config.override(ctx.config, "nat", **nat_keys)
    transport = TransportService(ctx)
    ctx.services["transport"] = transport
    await transport.start()
    nat = NatService(ctx)
    ctx.services["nat"] = nat
    await nat.start()
    return ctx


def nat_of(ctx: AgentContext) -> NatService:
    svc = ctx.services["nat"]
    assert isinstance(svc, NatService)
    return svc
