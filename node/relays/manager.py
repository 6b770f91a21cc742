"""The relay manager's core, without I/O: registrations, heartbeats, allocations.

Theory of operation: :meth:`RelayManager.receive` takes a datagram, its source address and
the wall clock, and returns the datagrams to send. A HELLO whose tag verifies under the
relay's enrollment key and whose counter is above the stored floor registers the relay (the
floor is then raised, so a recorded HELLO never registers again) and is answered by WELCOME
echoing the relay's challenge. Every later message must pass the relay's replay window.
:meth:`allocate` and :meth:`free` produce the messages to send; answers from the relay become
events (:class:`AllocGranted`, :class:`AllocRefused`, :class:`AllocEnded`, :class:`BridgeFrame`)
pulled with :meth:`next_event`.
"""

from __future__ import annotations

import collections
import ipaddress
from dataclasses import dataclass, field
from typing import Any

from node.relays import _wire as w
from node.relays.store import RelayRecord, RelayStore

Addr = tuple[str, int]
MAX_EVENTS = 1024
_SEQ_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocGranted:
    relay_id: bytes
    alloc_id: int
    host: str
    """The relay's address as the box sees it."""
    ports: tuple[int, int]
    """Leg A and leg B ports on the relay."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocRefused:
    relay_id: bytes
    alloc_id: int
    code: int


@dataclass(frozen=True, slots=True, kw_only=True)
class AllocEnded:
    relay_id: bytes
    alloc_id: int
    reason: int
    packets: int
    bytes: int


@dataclass(frozen=True, slots=True, kw_only=True)
class BridgeFrame:
    relay_id: bytes
    payload: bytes
    """An end-to-end encrypted frame from a BLE peer of the relay (opaque here)."""


Event = AllocGranted | AllocRefused | AllocEnded | BridgeFrame


@dataclass
class Session:
    """What the box knows about a relay that has registered."""

    record: RelayRecord
    address: Addr
    window: w.Window
    registered_at: float
    last_seen: float
    port_base: int = 0
    slots: int = 0
    free_heap: int = 0
    uptime_s: int = 0
    allocations: int = 0
    packets: int = 0
    bytes: int = 0
    drops: int = 0
    registrations: int = 1
    pending: dict[int, tuple[int, int, int, int, int]] = field(default_factory=dict)
    active: dict[int, tuple[int, int]] = field(default_factory=dict)


class RelayManager:
    def __init__(self, store: RelayStore, *, keepalive_ms: int = 15000) -> None:
        self.store = store
        self.keepalive_ms = keepalive_ms
        self.sessions: dict[bytes, Session] = {}
        self.rejected = 0
        self._epoch = 0
        self._seq = _SEQ_MAX
        self._next_alloc = 1
        self._events: collections.deque[Event] = collections.deque(maxlen=MAX_EVENTS)

    def _next_counter(self, now: float) -> int:
        # epoch << 32 | sequence, the epoch new at every start and kept in state.db, so the
        # counter grows across box restarts even when the clock went back (a Pi has no RTC):
        # a relay re-registering takes WELCOME's counter as its floor, and anything the box
        # sent before must stay below it. The clock only sets a minimum epoch.
        self._seq += 1
        if self._seq > _SEQ_MAX:
            self._epoch = self.store.next_epoch((int(now * 1_000_000) >> 32) + 1)
            self._seq = 1
        return (self._epoch << 32) | self._seq

    def _send(self, s: Session, typ: w.MsgType, now: float, *fields: object) -> tuple[bytes, Addr]:
        msg = w.encode(s.record.key, typ, s.record.relay_id, self._next_counter(now), *fields)
        return msg, s.address

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def receive(self, data: bytes, addr: Addr, now: float) -> list[tuple[bytes, Addr]]:
        """Handle one datagram from a relay; returns what to send back."""
        try:
            relay_id = w.peek_relay_id(data)
            record = self.store.get(relay_id)
            if record is None:
                raise w.WireError("unknown relay id")
            typ, _, counter, fields = w.decode(record.key, data)
        except w.WireError:
            self.rejected += 1
            return []
        if typ == w.MsgType.HELLO:
            return self._hello(record, addr, counter, fields, now)
        s = self.sessions.get(relay_id)
        if s is None or not s.window.accept(counter):
            self.rejected += 1
            return []
        s.last_seen = now
        s.address = addr
        if typ == w.MsgType.HEARTBEAT:
            s.free_heap, s.uptime_s, s.allocations = fields[0], fields[1], fields[2]
            s.packets += fields[3]
            s.bytes += fields[4]
            s.drops += fields[5]
            return [self._send(s, w.MsgType.HEARTBEAT_ACK, now)]
        if typ == w.MsgType.ALLOC_OK:
            alloc_id, port_a, port_b = fields
            if s.pending.pop(alloc_id, None) is not None:
                s.active[alloc_id] = (port_a, port_b)
                self._events.append(
                    AllocGranted(
                        relay_id=relay_id, alloc_id=alloc_id, host=addr[0], ports=(port_a, port_b)
                    )
                )
        elif typ == w.MsgType.ALLOC_ERR:
            if s.pending.pop(fields[0], None) is not None:
                self._events.append(
                    AllocRefused(relay_id=relay_id, alloc_id=fields[0], code=fields[1])
                )
        elif typ == w.MsgType.ALLOC_END:
            s.active.pop(fields[0], None)
            self._events.append(
                AllocEnded(
                    relay_id=relay_id,
                    alloc_id=fields[0],
                    reason=fields[1],
                    packets=fields[2],
                    bytes=fields[3],
                )
            )
        elif typ == w.MsgType.BRIDGE:
            self._events.append(BridgeFrame(relay_id=relay_id, payload=fields[0]))
        else:
            self.rejected += 1
        return []

    def _hello(
        self,
        record: RelayRecord,
        addr: Addr,
        counter: int,
        fields: tuple[Any, ...],
        now: float,
    ) -> list[tuple[bytes, Addr]]:
        old = self.sessions.get(record.relay_id)
        floor = max(record.hello_floor, old.window.top if old else 0)
        if counter <= floor:
            self.rejected += 1
            return []
        self.store.set_floor(record.relay_id, counter)
        challenge, _version, heap, port_base, slots = fields
        s = Session(
            record=self.store.get(record.relay_id) or record,
            address=addr,
            window=w.Window(counter),
            registered_at=now,
            last_seen=now,
            port_base=int(port_base),
            slots=int(slots),
            free_heap=int(heap),
            registrations=(old.registrations + 1) if old else 1,
        )
        self.sessions[record.relay_id] = s
        return [self._send(s, w.MsgType.WELCOME, now, challenge, self.keepalive_ms)]

    def alive(self, s: Session, now: float) -> bool:
        return now - s.last_seen <= 3 * self.keepalive_ms / 1000

    def allocate(
        self,
        relay_id: bytes,
        now: float,
        *,
        ip_a: str = "0.0.0.0",
        ip_b: str = "0.0.0.0",
        byte_quota: int,
        packet_quota: int,
        idle_ms: int,
        alloc_id: int | None = None,
    ) -> tuple[int, tuple[bytes, Addr]]:
        """An ALLOC for a registered relay: (alloc id, datagram); resend with the same id."""
        s = self.sessions.get(relay_id)
        if s is None or not self.alive(s, now):
            raise LookupError(f"relay {relay_id.hex()} is not registered")
        if alloc_id is None:
            alloc_id = self._next_alloc
            self._next_alloc = self._next_alloc % 0xFFFFFFFF + 1
        a, b = int(ipaddress.IPv4Address(ip_a)), int(ipaddress.IPv4Address(ip_b))
        spec = (a, b, byte_quota, packet_quota, idle_ms)
        s.pending[alloc_id] = spec
        return alloc_id, self._send(s, w.MsgType.ALLOC, now, alloc_id, *spec)

    def free(self, relay_id: bytes, alloc_id: int, now: float) -> tuple[bytes, Addr] | None:
        s = self.sessions.get(relay_id)
        if s is None:
            return None
        s.pending.pop(alloc_id, None)
        return self._send(s, w.MsgType.FREE, now, alloc_id)

    def bridge(self, relay_id: bytes, payload: bytes, now: float) -> tuple[bytes, Addr] | None:
        s = self.sessions.get(relay_id)
        if s is None or not self.alive(s, now):
            return None
        return self._send(s, w.MsgType.BRIDGE, now, payload)

    def health(self, now: float) -> list[dict[str, object]]:
        """One entry per enrolled relay, for the dashboard."""
        out: list[dict[str, object]] = []
        for rec in self.store.all():
            s = self.sessions.get(rec.relay_id)
            entry: dict[str, object] = {
                "relay_id": rec.relay_id.hex(),
                "name": rec.name,
                "online": bool(s and self.alive(s, now)),
            }
            if s is not None:
                entry.update(
                    address=f"{s.address[0]}:{s.address[1]}",
                    last_seen_s=round(now - s.last_seen, 1),
                    free_heap=s.free_heap,
                    uptime_s=s.uptime_s,
                    allocations=len(s.active),
                    slots=s.slots,
                    packets=s.packets,
                    bytes=s.bytes,
                    drops=s.drops,
                    registrations=s.registrations,
                )
            out.append(entry)
        return out

    def offers(self, now: float) -> list[dict[str, object]]:
        """Relay offers for this box's node record: registered relays with a free slot."""
        out: list[dict[str, object]] = []
        for s in self.sessions.values():
            if self.alive(s, now) and len(s.active) + len(s.pending) < s.slots:
                out.append(
                    {
                        "relay_id": s.record.relay_id.hex(),
                        "address": f"{s.address[0]}:{s.port_base}",
                        "host": s.address[0],
                        "port_base": s.port_base,
                        "slots_free": s.slots - len(s.active) - len(s.pending),
                    }
                )
        return out
