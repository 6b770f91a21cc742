"""asyncio glue for the STUN cores: one :class:`StunAgent` per UDP port.

The agent feeds datagrams to a :class:`StunClient` and a :class:`StunServer`, sends what they
produce and re-arms one ``loop.call_at`` timer. On a node it sits on the transport endpoint's
port (``endpoint.stun_handler = agent.datagram_received``, sending with ``endpoint.send_raw``);
:func:`open_stun_socket` and :func:`serve_rfc5780` give it sockets of its own instead.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from node import log
from node.transport.nat import stun
from node.transport.nat.errors import NatError, StunError, StunTimeout
from node.transport.nat.stun import Address
from node.transport.nat.stun_client import BindingFailed, BindingSucceeded, StunClient
from node.transport.nat.stun_server import StunServer

_log = log.get_logger(__name__)

Send = Callable[[bytes, Address, Address], None]
"""send(data, dest, source): send a datagram from the local address ``source``."""


class StunAgent:
    """Client and server of one UDP port."""

    def __init__(
        self,
        send: Send,
        local: Address,
        *,
        client: StunClient | None = None,
        server: StunServer | None = None,
    ) -> None:
        self._send = send
        self.local = local
        self.client = client or StunClient()
        self.server = server
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: dict[bytes, asyncio.Future[BindingSucceeded]] = {}
        self.extra_handlers: list[Callable[[stun.Message, bytes, Address], bool]] = []

    def _now(self) -> float:
        return self._loop.time()

    def datagram_received(self, data: bytes, addr: Address, local: Address | None = None) -> None:
        """Feed one STUN datagram that arrived on ``local`` (default: the agent's address)."""
        now = self._now()
        if self.client.receive(data, addr, now):
            self._pump()
            return
        if self.extra_handlers:
            try:
                msg = stun.decode(data)
            except StunError:
                return
            for handler in self.extra_handlers:
                if handler(msg, data, addr):
                    return
        if self.server is not None:
            here = local or self.local
            reply = self.server.handle(data, addr, here, now)
            if reply is not None:
                self._safe_send(reply.data, reply.dest, reply.source)

    def send(self, data: bytes, dest: Address) -> None:
        """Send a raw datagram from this agent's port (errors are logged, not raised)."""
        self._safe_send(data, dest, self.local)

    def _safe_send(self, data: bytes, dest: Address, source: Address) -> None:
        try:
            self._send(data, dest, source)
        except OSError as exc:
            _log.debug("stun_send_failed", dest=f"{dest[0]}:{dest[1]}", error=exc.strerror)

    def _pump(self) -> None:
        for data, dest in self.client.datagrams_to_send():
            self._safe_send(data, dest, self.local)
        while (event := self.client.next_event()) is not None:
            assert isinstance(event, BindingSucceeded | BindingFailed)
            fut = self._waiters.pop(event.transaction_id, None)
            if fut is None or fut.done():
                continue
            if isinstance(event, BindingSucceeded):
                fut.set_result(event)
            elif event.error_code is None:
                fut.set_exception(StunTimeout(f"STUN binding failed: {event.reason}"))
            else:
                fut.set_exception(NatError(f"STUN binding failed: {event.reason}"))
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.client.get_timer()
        if when is not None:
            self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.client.handle_timer(self._now())
        self._pump()

    async def binding(
        self,
        dest: Address,
        *,
        change: int = 0,
        username: str | None = None,
        integrity_key: bytes | None = None,
        extra: list[tuple[int, bytes]] | None = None,
        rto: float | None = None,
        attempts: int | None = None,
        final_wait: float | None = None,
    ) -> BindingSucceeded:
        """One Binding transaction; raises StunTimeout or NatError when it fails."""
        tid = self.client.request(
            dest,
            self._now(),
            change=change,
            username=username,
            integrity_key=integrity_key,
            extra=extra,
            rto=rto,
            attempts=attempts,
            final_wait=final_wait,
        )
        fut: asyncio.Future[BindingSucceeded] = self._loop.create_future()
        self._waiters[tid] = fut
        self._pump()
        try:
            return await fut
        finally:
            self.client.cancel(tid)
            self._waiters.pop(tid, None)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for fut in self._waiters.values():
            if not fut.done():
                fut.set_exception(NatError("STUN agent closed"))
        self._waiters.clear()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Address], None]) -> None:
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        if stun.is_stun(data):
            self.on_datagram(data, (addr[0], addr[1]))

    def error_received(self, exc: Exception) -> None:
        _log.debug("udp_error", error=str(exc))


class StunSocket:
    """A UDP socket of its own carrying a :class:`StunAgent`."""

    def __init__(self, agent: StunAgent, transport: asyncio.DatagramTransport) -> None:
        self.agent = agent
        self.transport = transport

    @property
    def local(self) -> Address:
        return self.agent.local

    async def binding(self, dest: Address, **kw: Any) -> BindingSucceeded:
        return await self.agent.binding(dest, **kw)

    def close(self) -> None:
        self.agent.close()
        self.transport.close()


async def _bind(
    local: Address,
    handler: Callable[[bytes, Address], None],
    sock: socket.socket | None = None,
) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
    try:
        if sock is not None:
            sock.setblocking(False)
            transport, _ = await loop.create_datagram_endpoint(lambda: _Udp(handler), sock=sock)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(handler), local_addr=local, family=family
            )
    except OSError as exc:
        raise NatError(f"cannot bind UDP {local[0]}:{local[1]} for STUN: {exc.strerror}") from exc
    return transport


async def open_stun_socket(
    local: Address = ("0.0.0.0", 0),
    *,
    server: StunServer | None = None,
    client: StunClient | None = None,
    sock: socket.socket | None = None,
) -> StunSocket:
    """Bind a UDP socket (or take ``sock``) and run a STUN agent (client, plus ``server`` if
    given) on it."""
    holder: list[StunAgent] = []
    transport = await _bind(local, lambda d, a: holder[0].datagram_received(d, a), sock)
    name = transport.get_extra_info("sockname")
    here = (name[0], name[1])

    def send(data: bytes, dest: Address, source: Address) -> None:
        transport.sendto(data, dest)

    agent = StunAgent(send, here, client=client, server=server)
    holder.append(agent)
    return StunSocket(agent, transport)


class Rfc5780Server:
    """A STUN server on two IPs by two ports, so it can honour CHANGE-REQUEST."""

    def __init__(self) -> None:
        self.transports: dict[Address, asyncio.DatagramTransport] = {}
        self.agent: StunAgent | None = None

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
        for t in self.transports.values():
            t.close()
        self.transports.clear()


async def serve_rfc5780(primary: Address, alternate: Address) -> Rfc5780Server:
    """Serve STUN on every (IP, port) pair of ``primary`` and ``alternate``."""
    group = Rfc5780Server()
    server = StunServer(rfc5780=(primary, alternate))

    def send(data: bytes, dest: Address, source: Address) -> None:
        transport = group.transports.get(source)
        if transport is not None:
            transport.sendto(data, dest)

    agent = StunAgent(send, primary, server=server)
    group.agent = agent

    def receiver(here: Address) -> Callable[[bytes, Address], None]:
        return lambda data, addr: agent.datagram_received(data, addr, here)

    try:
        for ip in (primary[0], alternate[0]):
            for port in (primary[1], alternate[1]):
                group.transports[(ip, port)] = await _bind((ip, port), receiver((ip, port)))
    except NatError:
        group.close()
        raise
    return group


__all__ = ["Rfc5780Server", "StunAgent", "StunSocket", "open_stun_socket", "serve_rfc5780"]
