"""The ``relays`` agent service: the UDP socket relays register on, allocations, offers, bridge.

Offers: the box keeps one open allocation on each online relay that has a free slot. Leg B is
the box's own side: the box sends a STUN binding indication from its transport port to it, so
the relay latches that leg to the box (and the box's NAT keeps a binding towards it), and
repeats it while the offer waits. Leg A is listed in the box's node record as
``mp:HOST:PORT``: a peer that cannot reach the box opens its transport session to that
address, the relay latches leg A to the peer and moves datagrams unchanged both ways, and the
box sees the session arrive from leg B. Once a session uses an offer the box opens another
(slots permitting); when that session ends the allocation is freed. Quotas and idle expiry
are the relay's, from ``[relays]``.

Bridge: frames a relay carries from its BLE peer wait in a bounded inbox for a local consumer
(``GET /api/relays/bridge``); ``send_bridge`` carries frames back.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from node import log
from node.config import parse_hostport
from node.errors import NodeError
from node.overlay.records import RELAY_MICROPYTHON, relay_entry
from node.relays import _wire as w
from node.relays.manager import (
    AllocEnded,
    AllocGranted,
    AllocRefused,
    BridgeFrame,
    RelayManager,
)
from node.relays.store import RelayStore
from node.transport.nat.keepalive import binding_indication

if TYPE_CHECKING:
    from node.agent import AgentContext
    from node.transport.endpoint import Endpoint

_log = log.get_logger(__name__)
ALLOC_TRIES = 5
ALLOC_RETRY_S = 0.5
LISTEN_RETRY_S = 30.0
OFFER_TICK_S = 1.0
LATCH_EVERY_S = 10.0
"""How often the box refreshes its leg of an offer nobody uses yet (NAT binding, idle timer)."""
OFFER_ROTATE_S = 600.0
"""An offer unused this long is freed and replaced (someone may hold its peer leg idle)."""
BRIDGE_INBOX = 256
_LAN = [ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")]


class RelayError(NodeError):
    """A relay could not be enrolled or could not grant an allocation."""


@dataclass(frozen=True)
class Allocation:
    """A relayed path: peers send to ``host:ports[0]`` and ``host:ports[1]``."""

    relay_id: str
    alloc_id: int
    host: str
    ports: tuple[int, int]


@dataclass
class Offer:
    """An open allocation the box's record lists; ``peer`` is set once a session uses it."""

    allocation: Allocation
    made: float
    latched: float = 0.0
    peer: bytes | None = None

    @property
    def box_leg(self) -> tuple[str, int]:
        return self.allocation.host, self.allocation.ports[1]

    def peer_leg(self, advertise_host: str = "") -> str:
        """HOST:PORT peers send to: the board as the box sees it, or ``advertise_host`` (the
        router's public address when the board's ports are forwarded there)."""
        return f"{advertise_host or self.allocation.host}:{self.allocation.ports[0]}"


@dataclass(frozen=True)
class Bridged:
    """A frame from a relay's BLE peer, as the box received it (payload opaque)."""

    relay_id: str
    at: float
    payload: bytes


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
        self.offers: dict[tuple[str, int], Offer] = {}
        self.bridge_inbox: collections.deque[Bridged] = collections.deque(maxlen=BRIDGE_INBOX)
        self.counters = {"offers_used": 0, "bridge_in": 0, "bridge_out": 0, "bridge_dropped": 0}
        self.ended = {r.name.lower(): 0 for r in w.EndReason}
        """Allocations ended, by the reason the relay gave (freed, idle, quota, reset)."""
        self._bridge_ready = asyncio.Event()
        self._closing: set[asyncio.Future[None]] = set()
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
            while True:
                await self.maintain_offers()
                await asyncio.sleep(OFFER_TICK_S)
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
                with contextlib.suppress(ValueError):
                    self.ended[w.EndReason(ev.reason).name.lower()] += 1
                offer = self.offers.pop((ev.relay_id.hex(), ev.alloc_id), None)
                if offer is not None:
                    self._end_session(offer, ev.reason)
                    self._refresh_record()
            elif isinstance(ev, BridgeFrame):
                self._bridged(ev)

    def _end_session(self, offer: Offer, reason: int) -> None:
        """The relay ended the allocation a session used (quota, idle): end the session too,
        so it cannot carry on through whatever allocation takes those ports next."""
        endpoint = self._endpoint()
        if endpoint is None:
            return
        for conn in endpoint.connections:
            if conn.remote_address == offer.box_leg:
                task = asyncio.ensure_future(conn.close(f"relay allocation ended ({reason})"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    def _bridged(self, ev: BridgeFrame) -> None:
        if len(self.bridge_inbox) == self.bridge_inbox.maxlen:
            self.counters["bridge_dropped"] += 1
        self.bridge_inbox.append(Bridged(ev.relay_id.hex(), time.time(), ev.payload))
        self.counters["bridge_in"] += 1
        self._bridge_ready.set()
        if self.on_bridge is not None:
            self.on_bridge(ev.relay_id, ev.payload)

    async def bridge_frames(self, wait: float = 0.0) -> list[Bridged]:
        """Take the frames waiting from BLE peers; with ``wait``, wait that long for one."""
        if not self.bridge_inbox and wait > 0:
            self._bridge_ready.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._bridge_ready.wait(), wait)
        out = list(self.bridge_inbox)
        self.bridge_inbox.clear()
        return out

    # -- offers: open allocations listed in the node record ---------------------------------

    def _endpoint(self) -> Endpoint | None:
        endpoint: Endpoint | None = getattr(self.ctx.services.get("transport"), "endpoint", None)
        if endpoint is None or endpoint.local_address[1] == 0:
            return None
        return endpoint

    def _box_ip(self, relay_host: str) -> str:
        """The address the relay will see the box's leg come from, when the box knows it."""
        try:
            if any(ipaddress.ip_address(relay_host) in n for n in _LAN):
                return "0.0.0.0"  # a relay on the home LAN sees the box's LAN address
        except ValueError:
            return "0.0.0.0"
        report = getattr(self.ctx.services.get("nat"), "report", None)
        public = getattr(report, "public_address", None)
        if public and ":" not in public[0]:
            return str(public[0])
        return "0.0.0.0"

    def _refresh_record(self) -> None:
        refresh = getattr(self.ctx.services.get("overlay"), "refresh_record", None)
        if callable(refresh):
            refresh()

    async def maintain_offers(self) -> None:
        """Keep one open allocation per online relay with a free slot; notice offers taken
        by a session and free allocations whose session ended."""
        endpoint = self._endpoint()
        if endpoint is None:
            return
        now = time.time()
        # well within the relay's idle expiry, or a waiting offer would lapse
        latch_every = min(LATCH_EVERY_S, self.ctx.config.relays.idle_ms / 3000)
        in_use = {c.remote_address: c for c in endpoint.connections if not c.is_closed}
        changed = False
        for key, offer in list(self.offers.items()):
            session = self.manager.sessions.get(bytes.fromhex(key[0]))
            conn = in_use.get(offer.box_leg)
            if (
                session is None
                or not self.manager.alive(session, now)
                or offer.made < session.registered_at
            ):
                # offline, or registered anew since (which ends the relay's allocations)
                del self.offers[key]
                self._end_session(offer, w.EndReason.RESET)
                changed = True
            elif offer.peer is None and conn is not None:
                offer.peer = conn.peer_id
                self.counters["offers_used"] += 1
                changed = True
                _log.info("relay_offer_used", relay=key[0], alloc=key[1],
                          peer=conn.peer_id.hex()[:16])  # fmt: skip
            elif offer.peer is not None and conn is None:
                self.free(offer.allocation)
                del self.offers[key]
            elif offer.peer is None and now - offer.made > OFFER_ROTATE_S:
                self.free(offer.allocation)
                del self.offers[key]
                changed = True
            elif offer.peer is None and now - offer.latched >= latch_every:
                endpoint.send_raw(binding_indication(), offer.box_leg)
                offer.latched = now
        for relay_id, session in list(self.manager.sessions.items()):
            rid = relay_id.hex()
            if not self.manager.alive(session, now) or any(
                o.peer is None and k[0] == rid for k, o in self.offers.items()
            ):
                continue
            if len(session.active) + len(session.pending) >= session.slots:
                continue
            try:
                alloc = await self.allocate(rid, ip_b=self._box_ip(session.address[0]))
            except RelayError as exc:
                _log.info("relay_offer_failed", relay=rid, error=str(exc))
                continue
            offer = Offer(alloc, now, latched=now)
            endpoint.send_raw(binding_indication(), offer.box_leg)
            self.offers[(rid, alloc.alloc_id)] = offer
            changed = True
            _log.info(
                "relay_offer",
                relay=rid,
                alloc=alloc.alloc_id,
                address=offer.peer_leg(self.ctx.config.relays.advertise_host),
            )
        if changed:
            self._refresh_record()

    def carries(self, address: tuple[str, int]) -> bool:
        """Whether a session from ``address`` comes through one of our boards' offers."""
        return any(o.box_leg == address for o in self.offers.values())

    def record_offers(self) -> list[str]:
        """``relays`` entries for the node record: the open offers' peer legs."""
        host = self.ctx.config.relays.advertise_host
        return [
            relay_entry(RELAY_MICROPYTHON, o.peer_leg(host))
            for o in self.offers.values()
            if not o.peer
        ]

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
            if alloc_id is not None:
                # Forget it (it held a slot in the count) and free it should it come late.
                self._sendto(self.manager.free(rid, alloc_id, time.time()))
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
        if out is not None:
            self.counters["bridge_out"] += 1
        return out is not None

    def relay_offers(self) -> list[dict[str, object]]:
        """Registered relays with free slots (the dashboard's view; the record's entries are
        :meth:`record_offers`)."""
        return self.manager.offers(time.time())

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
            "offers": [
                {
                    "relay_id": k[0],
                    "alloc_id": k[1],
                    "address": o.peer_leg(self.ctx.config.relays.advertise_host),
                    "in_use": o.peer is not None,
                }
                for k, o in self.offers.items()
            ],
            "bridge_waiting": len(self.bridge_inbox),
            "ended": dict(self.ended),
            **self.counters,
        }
