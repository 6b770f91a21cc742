"""The agent's "nat" service: STUN on the node's port, NAT discovery, port mapping.

It sits on the transport endpoint: STUN datagrams (the endpoint demultiplexes them by the magic
cookie) come to a :class:`StunAgent` that answers binding requests (every publicly reachable
node is a STUN server for the others) and runs our own client transactions. Every
``rediscover_s`` it classifies the NAT from ``[nat] stun_servers`` (or the bootstrap peers),
asks the home router for a port mapping when the NAT is not public, and re-signs the node's
DHT record with what it learned.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import psutil

from node import log
from node.config import parse_hostport
from node.transport.nat.aio import StunAgent
from node.transport.nat.discovery import NatClass, NatReport, discover
from node.transport.nat.errors import NatError
from node.transport.nat.portmap import PortMapper
from node.transport.nat.stun import Address
from node.transport.nat.stun_server import StunServer

if TYPE_CHECKING:
    from node.agent import AgentContext
    from node.transport.endpoint import Connection, Endpoint

_log = log.get_logger(__name__)


def local_ips() -> frozenset[str]:
    """Addresses of this host's interfaces (to tell "no NAT" from a port-preserving NAT)."""
    out = set()
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family.name in ("AF_INET", "AF_INET6"):
                out.add(a.address.split("%")[0])
    return frozenset(out)


class NatService:
    """NAT traversal for the node's UDP endpoint."""

    name = "nat"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.nat
        self.endpoint: Endpoint | None = None
        self.stun: StunAgent | None = None
        self.report: NatReport | None = None
        self.mapper: PortMapper | None = None
        self.relayed: set[bytes] = set()
        self.last_error: str | None = None
        self.discovered = asyncio.Event()

    async def start(self) -> None:
        if self.stun is not None:
            return
        transport = self.ctx.services.get("transport")
        endpoint = getattr(transport, "endpoint", None)
        if endpoint is None:
            raise NatError("the nat service needs the transport service; it is not configured")
        self.endpoint = endpoint
        server = StunServer() if self.cfg.stun_server else None

        def send(data: bytes, dest: Address, source: Address) -> None:
            endpoint.send_raw(data, dest)

        self.stun = StunAgent(send, endpoint.local_address, server=server)
        endpoint.stun_handler = self.stun.datagram_received

    def stun_servers(self) -> list[Address]:
        texts = self.cfg.stun_servers or self.ctx.config.network.bootstrap
        return [parse_hostport(t) for t in texts][:2]

    async def run(self) -> None:
        try:
            while True:
                await self.check()
                await asyncio.sleep(self.cfg.rediscover_s)
        finally:
            if self.mapper is not None:
                with contextlib.suppress(Exception):
                    await self.mapper.close()
            if self.stun is not None:
                self.stun.close()

    async def check(self) -> NatReport | None:
        """Classify the NAT now (and map a port when it helps); None without STUN servers."""
        assert self.stun is not None and self.endpoint is not None
        servers = self.stun_servers()
        if not servers:
            return None
        self.stun.local = self.endpoint.local_address
        try:
            report = await discover(
                self.stun,
                servers[0],
                servers[1] if len(servers) > 1 else None,
                local_ips=local_ips(),
            )
        except NatError as exc:
            self.last_error = str(exc)
            _log.info("nat_discovery_failed", error=str(exc))
            return None
        changed = self.report is None or self.report.to_json() != report.to_json()
        self.report = report
        self.last_error = None
        if changed:
            _log.info("nat_discovered", **report.to_json())
            self.ctx.events.emit(
                "info", "nat", f"NAT class {report.nat_class.value}", **report.to_json()
            )
        if (
            self.cfg.port_mapping
            and report.nat_class not in (NatClass.PUBLIC, NatClass.BLOCKED)
            and self.mapper is None
        ):
            self.mapper = PortMapper(self.endpoint.local_address[1], self.cfg.mapping_lifetime_s)
            try:
                await self.mapper.start()
            except NatError as exc:
                _log.info("port_mapping_unavailable", error=str(exc))
                self.mapper = None
        overlay = self.ctx.services.get("overlay")
        refresh = getattr(overlay, "refresh_record", None)
        if changed and callable(refresh):
            refresh()
        self.discovered.set()
        return report

    # -- what other services read -----------------------------------------------------------

    def public_addresses(self) -> list[str]:
        out = []
        if self.mapper is not None and self.mapper.external is not None:
            host, port = self.mapper.external
            out.append(f"{host}:{port}")
        report = self.report
        if report is not None and report.public_address and report.endpoint_independent:
            host, port = report.public_address
            out.append(f"{host}:{port}")
        return out

    def nat_info(self) -> dict[str, str | None]:
        pub = self.public_addresses()
        return {
            "class": self.report.nat_class.value if self.report else None,
            "public_address": pub[0] if pub else None,
            "port_mapping": self.mapper.describe() if self.mapper is not None else None,
        }

    def path_of(self, conn: Connection) -> str:
        if conn.peer_id in self.relayed:
            return "relayed"
        if self.mapper is not None and self.mapper.external is not None:
            return "port-mapped"
        return "direct"

    def status(self) -> dict[str, Any]:
        return {
            **self.nat_info(),
            "report": self.report.to_json() if self.report else None,
            "error": self.last_error,
            "stun_server": self.stun.server.counters if self.stun and self.stun.server else None,
        }
