"""The agent's UDP endpoint on ``--listen``."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Any

from node import log
from node.config import parse_hostport
from node.errors import NodeError

if TYPE_CHECKING:
    from node.agent import AgentContext

_log = log.get_logger(__name__)


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, service: TransportService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.service.counters["datagrams_in"] += 1
        self.service.counters["bytes_in"] += len(data)


class TransportService:
    """Owns the node's UDP socket."""

    name = "transport"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.counters = {"datagrams_in": 0, "bytes_in": 0}
        self._transport: asyncio.DatagramTransport | None = None
        self.address: tuple[str, int] | None = None

    async def start(self) -> None:
        if self._transport is not None:
            return
        host, port = parse_hostport(self.ctx.config.network.listen)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(host, port), family=family
            )
        except OSError as exc:
            raise NodeError(
                f"cannot listen on UDP {host}:{port}: {exc.strerror}; "
                "choose another address with --listen or [network] listen"
            ) from exc
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])
        self.ctx.urls["listen"] = f"{self.address[0]}:{self.address[1]}"
        _log.info("udp_listening", address=self.ctx.urls["listen"])

    async def run(self) -> None:
        await asyncio.Event().wait()

    def status(self) -> dict[str, Any]:
        return {"listen": self.ctx.urls.get("listen"), **self.counters}
