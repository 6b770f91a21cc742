"""The agent's transport service: the UDP endpoint on ``--listen``.

Other services reach the endpoint as ``ctx.services["transport"].endpoint`` (register stream
handlers with ``set_handler`` before or after start; ``connect`` once started). ``status()``
goes to ``/api/status`` and ``network()`` feeds the dashboard's network panel.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from node import log
from node.config import parse_hostport
from node.errors import NodeError
from node.identity import encode_id
from node.transport.connection import TransportConfig
from node.transport.endpoint import Connection, Endpoint

if TYPE_CHECKING:
    from node.agent import AgentContext

_log = log.get_logger(__name__)

CAP_INTERVAL = 1.0  # seconds between re-sharing the bandwidth cap among sessions


def transport_config(ctx: AgentContext) -> TransportConfig:
    net = ctx.config.network
    return TransportConfig(
        idle_timeout=net.idle_timeout_s,
        keepalive_interval=net.keepalive_s,
        congestion=net.congestion,
    )


class TransportService:
    """Owns the node's UDP socket and every encrypted session on it."""

    name = "transport"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.endpoint = Endpoint(
            ctx.identity,
            config=transport_config(ctx),
            max_sessions=ctx.config.network.max_sessions,
        )
        self.address: tuple[str, int] | None = None
        self._cap: int | None = None

    async def start(self) -> None:
        if self.address is not None:
            return
        host, port = parse_hostport(self.ctx.config.network.listen)
        try:
            await self.endpoint.bind(host, port)
        except OSError as exc:
            raise NodeError(
                f"cannot listen on UDP {host}:{port}: {exc.strerror}; "
                "choose another address with --listen or [network] listen"
            ) from exc
        self.address = self.endpoint.local_address
        self.ctx.urls["listen"] = f"{self.address[0]}:{self.address[1]}"
        _log.info("udp_listening", address=self.ctx.urls["listen"])

    async def run(self) -> None:
        try:
            while True:
                self.apply_bandwidth_cap()
                await asyncio.sleep(CAP_INTERVAL)
        finally:
            await self.endpoint.close()
            self.address = None

    def apply_bandwidth_cap(self) -> None:
        """Share ``ctx.limits.bandwidth_cap_bps`` (heat, power) among the busy sessions."""
        cap = self.ctx.limits.bandwidth_cap_bps
        conns = [c._core for c in self.endpoint.connections]
        if cap is None:
            per: float | None = None
        else:
            busy = sum(1 for c in conns if c.bytes_in_flight or c.send_pending())
            per = cap / 8 / max(1, busy)
        for core in conns:
            core.rate_cap = per
        if cap != self._cap:
            self._cap = cap
            _log.info("bandwidth_cap", bps=cap)

    def _path_of(self, conn: Connection) -> str:
        nat = self.ctx.services.get("nat")
        path_of = getattr(nat, "path_of", None)
        if callable(path_of):
            kind = path_of(conn)
            if kind in ("direct", "port-mapped", "relayed"):
                return str(kind)
        return "direct"

    def _nat_info(self) -> dict[str, str | None]:
        info: dict[str, str | None] = {"class": None, "public_address": None, "port_mapping": None}
        nat = self.ctx.services.get("nat")
        nat_info = getattr(nat, "nat_info", None)
        if callable(nat_info):
            got = nat_info()
            if isinstance(got, dict):
                for key in info:
                    value = got.get(key)
                    info[key] = None if value is None else str(value)
        return info

    def _counter(self, key: str) -> int:
        return int(self.endpoint.core.counters.get(key, 0))

    def network(self) -> dict[str, Any]:
        """The dashboard's view of the node's network (shape fixed with the web service)."""
        peers = []
        for conn in self.endpoint.connections:
            rtt = conn.rtt
            addr = conn.remote_address
            peers.append(
                {
                    "node_id": encode_id(conn.peer_id),
                    "address": f"{addr[0]}:{addr[1]}",
                    "path": self._path_of(conn),
                    "rtt_ms": round(rtt * 1000, 2) if rtt is not None else None,
                }
            )
        return {
            "listen": self.ctx.urls.get("listen", ""),
            "sessions": len(peers),
            "peers": peers,
            "nat": self._nat_info(),
            "bytes_in": self._counter("bytes_in"),
            "bytes_out": self.endpoint.counters["bytes_out"],
        }

    def status(self) -> dict[str, Any]:
        return {"listen": self.ctx.urls.get("listen"), **self.endpoint.status()}
