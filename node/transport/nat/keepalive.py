"""Keepalives that hold NAT bindings open, sized from the measured binding lifetime.

Measuring (after RFC 5780 section 4.6): a socket asks a STUN server for its mapping, stays
silent for ``t`` seconds, then a second local socket asks the same server to answer to that
mapping's port (RESPONSE-PORT). The answer reaches the first socket only if the router still
holds the binding, so a search over ``t`` brackets the router's UDP timeout. The agent
measures from two sockets of their own: the node's port talks to the servers (bootstrap
peers) all the time, so its binding towards them is never idle.

Holding: :class:`Keepalive` sends a 20-byte STUN Binding indication (RFC 8489 section 6.1:
indications are not answered) to every directly connected peer at half the measured
lifetime, from the node's own port, which refreshes both our mapping and the peer's filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Iterable

from node import log
from node.transport.nat import stun
from node.transport.nat.aio import StunAgent
from node.transport.nat.errors import NatError, StunTimeout
from node.transport.nat.stun import Address, Attr, Class, Method

DEFAULT_INTERVAL = 15.0  # before a measurement: under the 30 s many home routers use
MIN_INTERVAL = 2.0
MAX_INTERVAL = 60.0
_log = log.get_logger(__name__)


def binding_indication() -> bytes:
    msg = stun.Message(Method.BINDING, Class.INDICATION, secrets.token_bytes(12))
    return stun.encode(msg)


def interval_for(lifetime: float | None) -> float:
    """Keepalive interval for a binding lifetime (half of it, within sane bounds)."""
    if lifetime is None:
        return DEFAULT_INTERVAL
    return max(MIN_INTERVAL, min(MAX_INTERVAL, lifetime / 2))


async def binding_alive_after(
    primary: StunAgent,
    probe: StunAgent,
    server: Address,
    wait: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> bool:
    """True when ``primary``'s binding towards ``server`` outlives ``wait`` idle seconds."""
    mapped = (await primary.binding(server)).mapped
    await sleep(wait)
    loop = asyncio.get_running_loop()
    arrived: asyncio.Future[bool] = loop.create_future()
    tid: list[bytes] = []

    def catch(msg: stun.Message, data: bytes, addr: Address) -> bool:
        if tid and msg.transaction_id == tid[0] and not arrived.done():
            arrived.set_result(True)
            return True
        return False

    primary.extra_handlers.append(catch)
    try:
        request = stun.binding_request(secrets.token_bytes(12))
        request.add(Attr.RESPONSE_PORT, mapped[1].to_bytes(2, "big") + b"\x00\x00")
        tid.append(request.transaction_id)
        data = stun.encode(request, fingerprint=True)
        for _ in range(3):
            probe.send(data, server)
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(arrived), 0.5)
        return False
    finally:
        primary.extra_handlers.remove(catch)


async def measure_binding_lifetime(
    primary: StunAgent,
    probe: StunAgent,
    server: Address,
    *,
    low: float = 2.0,
    high: float = 120.0,
    precision: float = 2.0,
) -> float:
    """A lower bound (within ``precision``) of how long the router keeps an idle binding.

    Idle times double from ``low`` until a binding dies (so a short timeout is found in
    seconds, not after ``high``), then a binary search narrows the bracket. Returns ``high``
    when the binding outlives it; raises NatError when even ``low`` is too long (the router
    forgets bindings almost at once: keepalives cannot help).
    """
    try:
        if not await binding_alive_after(primary, probe, server, low):
            raise NatError(f"the router drops UDP bindings within {low:g} s")
        wait = low
        while True:
            wait = min(high, wait * 2)
            if not await binding_alive_after(primary, probe, server, wait):
                high = wait
                break
            low = wait
            if wait >= high:
                return high
        while high - low > precision:
            mid = (low + high) / 2
            if await binding_alive_after(primary, probe, server, mid):
                low = mid
            else:
                high = mid
    except StunTimeout as exc:
        raise NatError(f"STUN server {server[0]}:{server[1]} did not answer: {exc}") from exc
    _log.info("binding_lifetime_measured", seconds=round(low, 1))
    return low


class Keepalive:
    """Sends binding indications to peers every ``interval`` seconds."""

    def __init__(
        self,
        send: Callable[[bytes, Address], None],
        peers: Callable[[], Iterable[Address]],
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.send = send
        self.peers = peers
        self.interval = interval
        self.sent = 0

    def tick(self) -> int:
        """Send one round; returns how many indications went out."""
        n = 0
        for addr in set(self.peers()):
            try:
                self.send(binding_indication(), addr)
            except OSError:
                continue
            n += 1
        self.sent += n
        return n

    async def run(self) -> None:
        # wakes at least every second, so a new interval (once measured) applies at once
        loop = asyncio.get_running_loop()
        last = loop.time()
        while True:
            await asyncio.sleep(max(0.0, min(1.0, last + self.interval - loop.time())))
            if loop.time() >= last + self.interval:
                last = loop.time()
                self.tick()
