"""A deterministic fake network and clock for driving endpoint cores in memory."""

from __future__ import annotations

import dataclasses
import heapq
import random
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from node.identity import Identity
from node.transport.connection import Address, ConnectionCore, TransportConfig
from node.transport.demux import EndpointCore
from node.transport.events import Event


def make_endpoint(seed: int, **kwargs: object) -> EndpointCore:
    ident = Identity(SigningKey(bytes([seed]) * 32))
    return EndpointCore(
        static_private=bytes(ident.x25519_private),
        public_key=ident.public_key,
        **kwargs,  # type: ignore[arg-type]
    )


@dataclass
class Link:
    """One direction's behaviour: delay, jitter (reorders), loss, duplication, rate, and the
    largest datagram it carries (``mtu``, UDP payload bytes; larger ones are dropped)."""

    delay: float = 0.025
    jitter: float = 0.0
    loss: float = 0.0
    duplicate: float = 0.0
    rate_bps: float | None = None
    queue_bytes: int | None = None
    mtu: int | None = None
    _busy_until: float = 0.0
    _queued: list[float] = field(default_factory=list)


class FakeNetwork:
    """Endpoints attached at addresses; datagrams travel through per-direction links."""

    def __init__(self, seed: int = 1, link: Link | None = None) -> None:
        self.now = 0.0
        self.rng = random.Random(seed)
        self.default = link or Link()
        self.links: dict[tuple[Address, Address], Link] = {}
        self.endpoints: dict[Address, EndpointCore] = {}
        self._queue: list[tuple[float, int, bytes, Address, Address]] = []
        self._seq = 0
        self.delivered = 0
        self.dropped = 0
        self.sizes: set[int] = set()  # of the datagrams sent
        self.events: list[tuple[Address, ConnectionCore, Event]] = []
        self.nat: dict[Address, Address] = {}  # rewrites a sender's address (NAT rebinding)

    def attach(self, addr: Address, ep: EndpointCore) -> None:
        self.endpoints[addr] = ep

    def link(self, src: Address, dst: Address) -> Link:
        """The link of one direction (its own queue; the default's settings)."""
        link = self.links.get((src, dst))
        if link is None:
            link = self.links[(src, dst)] = dataclasses.replace(self.default, _queued=[])
        return link

    def send(self, data: bytes, src: Address, dst: Address) -> None:
        link = self.link(src, dst)
        src = self.nat.get(src, src)
        self.sizes.add(len(data))
        if link.mtu is not None and len(data) > link.mtu:
            self.dropped += 1
            return
        if self.rng.random() < link.loss:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < link.duplicate else 1
        start = self.now
        if link.rate_bps:
            if link.queue_bytes is not None:
                backlog = (link._busy_until - self.now) * link.rate_bps / 8
                if backlog + len(data) > link.queue_bytes:
                    self.dropped += 1
                    return
            start = max(self.now, link._busy_until) + len(data) * 8 / link.rate_bps
            link._busy_until = start
        for _ in range(copies):
            at = start + link.delay + (self.rng.random() * link.jitter if link.jitter else 0.0)
            self._seq += 1
            heapq.heappush(self._queue, (at, self._seq, data, src, dst))

    def flush(self) -> None:
        for addr, ep in self.endpoints.items():
            for _ in range(100):
                out = ep.datagrams_to_send(self.now)
                for conn, ev in ep.events():
                    self.events.append((addr, conn, ev))
                if not out:
                    break
                for data, dst in out:
                    self.send(data, addr, dst)

    def step(self) -> bool:
        """Advance to the next delivery or timer; False when nothing is left to do."""
        self.flush()
        times = [t for ep in self.endpoints.values() if (t := ep.get_timer()) is not None]
        next_timer = min(times) if times else None
        next_pkt = self._queue[0][0] if self._queue else None
        if next_timer is None and next_pkt is None:
            return False
        if next_pkt is not None and (next_timer is None or next_pkt <= next_timer):
            at, _, data, src, dst = heapq.heappop(self._queue)
            self.now = max(self.now, at)
            ep = self.endpoints.get(dst)
            if ep is not None:
                self.delivered += 1
                ep.receive(data, src, self.now)
        else:
            assert next_timer is not None
            self.now = max(self.now, next_timer)
            for ep in self.endpoints.values():
                ep.handle_timer(self.now)
        return True

    def run_until(self, cond: object, limit: float = 60.0) -> None:
        """Step until ``cond()`` is true; fails when fake time passes ``limit``."""
        while not cond():  # type: ignore[operator]
            if self.now > limit or not self.step():
                raise AssertionError(f"condition not reached by t={self.now:.3f}")

    def run_for(self, duration: float) -> None:
        end = self.now + duration
        while self.now < end:
            if not self.step():
                break
        self.now = max(self.now, end)


def config(**kw: object) -> TransportConfig:
    return TransportConfig(**kw)  # type: ignore[arg-type]
