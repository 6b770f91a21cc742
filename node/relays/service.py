"""The ``relays`` agent service: the UDP socket relays register on, and allocation requests."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node import log
from node.config import parse_hostport
from node.errors import NodeError
from node.relays import _wire as w
from node.relays.manager import (
    AllocEnded,
    AllocGranted,
    AllocRefused,
    BridgeFrame,
    RelayManager,
)
from node.relays.store import RelayStore

if TYPE_CHECKING:
    from node.agent import AgentContext

_log = log.get_logger(__name__)
ALLOC_TRIES = 5
ALLOC_RETRY_S = 0.5
LISTEN_RETRY_S = 30.0


class RelayError(NodeError):
    """A relay could not be enrolled or could not grant an allocation."""


@dataclass(frozen=True)
class Allocation:
    """A relayed path: peers send to ``host:ports[0]`` and ``host:ports[1]``."""

    relay_id: str
    alloc_id: int
    host: str
    ports: tuple[int, int]


@dataclass(frozen=True)
class Enrollment:
    relay_id: str
    name: str
    key: str
    home: str

    @property
    def token(self) -> str:
        """What BLE provisioning carries: ``BR1:<id>:<key>:<host>:<port>``."""
        return f"BR1:{self.relay_id}:{self.key}:{self.home}"


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, service: RelaysService) -> None:
        self.service = service

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.service.datagram(data, (str(addr[0]), int(addr[1])))


class RelaysService:
    """Owns the relay manager and its UDP socket."""

    name = "relays"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        cfg = ctx.config.relays
        self.store = RelayStore(ctx.db)
        self.manager = RelayManager(self.store, keepalive_ms=cfg.keepalive_ms)
        self.address: tuple[str, int] | None = None
        self.error: str | None = None
        self.on_bridge: Callable[[bytes, bytes], None] | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._waiters: dict[int, asyncio.Future[AllocGranted | AllocRefused]] = {}

    async def start(self) -> None:
        if self._transport is not None:
            return
        host, port = parse_hostport(self.ctx.config.relays.listen)
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Protocol(self), local_addr=(host, port), family=family
            )
        except OSError as exc:
            # Relays are optional: the box runs on and says so; run() keeps retrying.
            self.error = (
                f"cannot listen for relays on UDP {host}:{port}: {exc.strerror}; "
                "choose another address with [relays] listen"
            )
            _log.warning("relays_listen_failed", address=f"{host}:{port}", error=exc.strerror)
            return
        self.error = None
        self._transport = transport
        sockname = transport.get_extra_info("sockname")
        self.address = (sockname[0], sockname[1])
        self.ctx.urls["relays"] = f"{self.address[0]}:{self.address[1]}"
        _log.info("relays_listening", address=self.ctx.urls["relays"])

    async def run(self) -> None:
        try:
            if self._transport is None and self.error:
                self.ctx.events.emit("warning", self.name, self.error)
            while self._transport is None:
                await asyncio.sleep(LISTEN_RETRY_S)
                await self.start()
            await asyncio.Event().wait()
        finally:
            if self._transport is not None:
                self._transport.close()
                self._transport = None

    def _sendto(self, out: tuple[bytes, tuple[str, int]] | None) -> None:
        if out is not None and self._transport is not None:
            self._transport.sendto(out[0], out[1])

    def datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        for out in self.manager.receive(data, addr, time.time()):
            self._sendto(out)
        while (ev := self.manager.next_event()) is not None:
            if isinstance(ev, AllocGranted | AllocRefused):
                fut = self._waiters.pop(ev.alloc_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(ev)
            elif isinstance(ev, AllocEnded):
                _log.info("relay_alloc_ended", relay=ev.relay_id.hex(), alloc=ev.alloc_id,
                          reason=ev.reason, packets=ev.packets, bytes=ev.bytes)  # fmt: skip
            elif isinstance(ev, BridgeFrame) and self.on_bridge is not None:
                self.on_bridge(ev.relay_id, ev.payload)

    # -- library API (dashboard, NAT traversal, enrollment) ---------------------------------

    def enroll(self, name: str, home: str) -> Enrollment:
        """Issue a relay id and key; ``home`` is how the relay reaches this box (HOST:PORT)."""
        try:
            parse_hostport(home)
        except ValueError as exc:
            raise RelayError(f"relay home address {home!r}: {exc}") from None
        if not 0 < len(name) <= 64 or not name.isprintable():
            raise RelayError("relay name must be 1-64 printable characters")
        rec = self.store.issue(name)
        _log.info("relay_enrolled", relay=rec.relay_id.hex(), name=name)
        self.ctx.events.emit("info", self.name, f"relay {name} enrolled ({rec.relay_id.hex()})")
        return Enrollment(rec.relay_id.hex(), name, rec.key.hex(), home)

    def home_port(self) -> int:
        if self.address is not None:
            return self.address[1]
        return parse_hostport(self.ctx.config.relays.listen)[1]

    async def allocate(
        self, relay_id: str, *, ip_a: str = "0.0.0.0", ip_b: str = "0.0.0.0"
    ) -> Allocation:
        """Ask a relay for a relayed path between two peers (their IPv4 addresses, 0 = any)."""
        cfg = self.ctx.config.relays
        rid = bytes.fromhex(relay_id)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[AllocGranted | AllocRefused] = loop.create_future()
        alloc_id: int | None = None
        try:
            for _ in range(ALLOC_TRIES):
                try:
                    alloc_id, out = self.manager.allocate(
                        rid, time.time(), ip_a=ip_a, ip_b=ip_b, byte_quota=cfg.byte_quota,
                        packet_quota=cfg.packet_quota, idle_ms=cfg.idle_ms, alloc_id=alloc_id,
                    )  # fmt: skip
                except LookupError as exc:
                    raise RelayError(f"{exc}; check `bitchat-node status`") from None
                self._waiters[alloc_id] = fut
                self._sendto(out)
                with contextlib.suppress(TimeoutError):
                    ev = await asyncio.wait_for(asyncio.shield(fut), ALLOC_RETRY_S)
                    if isinstance(ev, AllocRefused):
                        raise RelayError(
                            f"relay {relay_id} refused the allocation (code {ev.code})"
                        )
                    return Allocation(relay_id, ev.alloc_id, ev.host, ev.ports)
            raise RelayError(f"relay {relay_id} did not answer an allocation request")
        finally:
            if alloc_id is not None:
                self._waiters.pop(alloc_id, None)

    def free(self, allocation: Allocation) -> None:
        self._sendto(
            self.manager.free(bytes.fromhex(allocation.relay_id), allocation.alloc_id, time.time())
        )

    def send_bridge(self, relay_id: str, payload: bytes) -> bool:
        """Send an (already end-to-end encrypted) frame to a relay's BLE peer."""
        if not 0 < len(payload) <= w.MAX_BRIDGE:
            raise RelayError(f"bridge frames carry 1-{w.MAX_BRIDGE} bytes")
        out = self.manager.bridge(bytes.fromhex(relay_id), payload, time.time())
        self._sendto(out)
        return out is not None

    def relay_offers(self) -> list[dict[str, object]]:
        """Relay offers for the node record (registered relays with free slots)."""
        return self.manager.offers(time.time())

    def relay_addresses(self) -> tuple[str, ...]:
        """``HOST:PORT`` of each offered relay, as node records list them."""
        return tuple(str(o["address"]) for o in self.relay_offers())

    def relays(self) -> list[dict[str, object]]:
        """Health of every enrolled relay, for the dashboard."""
        return self.manager.health(time.time())

    def status(self) -> dict[str, Any]:
        health = self.relays()
        return {
            "listen": self.ctx.urls.get("relays"),
            "error": self.error,
            "enrolled": len(health),
            "online": sum(1 for h in health if h["online"]),
            "rejected": self.manager.rejected,
            "relays": health,
        }
