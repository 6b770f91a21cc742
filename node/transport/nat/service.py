"""The agent's "nat" service: STUN on the node's port, NAT discovery, port mapping.

It sits on the transport endpoint: STUN datagrams (the endpoint demultiplexes them by the magic
cookie) come to a :class:`StunAgent` that answers binding requests (every publicly reachable
node is a STUN server for the others) and runs our own client transactions. Every
``rediscover_s`` it classifies the NAT from ``[nat] stun_servers`` (or the bootstrap peers;
a failed check is retried sooner, with back-off), asks the home router for a port mapping
when the NAT is not public, keeps relay reservations on the bootstrap peers (renewed when a
relay goes away), and re-signs the node's DHT record with what it learned.

:meth:`NatService.reach` is the owner's reachability check (``POST /api/network/reach``):
look a node id up in the DHT, connect as the NAT allows, echo bytes over a ``reach`` stream
and report the path the session took.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import TYPE_CHECKING, Any

import psutil

from node import log
from node.config import parse_hostport
from node.identity import encode_id
from node.overlay.records import RELAY_MICROPYTHON, relay_kind
from node.transport.nat.aio import StunAgent, open_stun_socket
from node.transport.nat.discovery import NatClass, NatReport, discover
from node.transport.nat.errors import NatError
from node.transport.nat.keepalive import Keepalive, interval_for, measure_binding_lifetime
from node.transport.nat.portmap import PortMapper
from node.transport.nat.relay import RelayClient, RelayLimits, RelayServer, RelayUse
from node.transport.nat.stun import Address
from node.transport.nat.stun_server import StunServer
from node.transport.nat.traversal import Traversal, predicted

if TYPE_CHECKING:
    from node.agent import AgentContext
    from node.overlay.records import NodeRecord
    from node.transport.endpoint import Connection, Endpoint, Stream

_log = log.get_logger(__name__)

REACH_PROTOCOL = "reach"
REACH_MAX = 65536
REACH_TIMEOUT = 15.0
RETRY_MIN = 5.0  # first retry of a failed NAT check
RELAY_CHECK_S = 15.0  # how often lost relay reservations are replaced


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
        self.last_error: str | None = None
        self.discovered = asyncio.Event()
        self.credentials: dict[str, bytes] = {}
        self.traversal: Traversal | None = None
        self.relay_server: RelayServer | None = None
        self.relay_conns: dict[Address, Connection] = {}
        self.board_paths: set[Address] = set()
        """Peers' relay-board allocations our sessions were opened to."""
        self.binding_lifetime: float | None = None
        self.keepalive: Keepalive | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._measuring: asyncio.Task[None] | None = None
        self._connecting: dict[bytes, asyncio.Future[Connection]] = {}
        self._mapping: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.stun is not None:
            return
        transport = self.ctx.services.get("transport")
        endpoint = getattr(transport, "endpoint", None)
        if endpoint is None:
            raise NatError("the nat service needs the transport service; it is not configured")
        self.endpoint = endpoint
        # authenticated hole-punch checks are always answered; plain ones if we serve STUN
        server = StunServer(credentials=self.credentials.get, serve_plain=self.cfg.stun_server)

        def send(data: bytes, dest: Address, source: Address) -> None:
            endpoint.send_raw(data, dest)

        self.stun = StunAgent(send, endpoint.local_address, server=server)
        endpoint.stun_handler = self.stun.datagram_received
        self.traversal = Traversal(
            endpoint, self.stun, RelayClient(endpoint), self.candidates, self.credentials
        )
        self.traversal.attach()
        if self.cfg.offer_relay:
            limits = RelayLimits(
                self.cfg.relay_max_connections,
                self.cfg.relay_max_bytes,
                float(self.cfg.relay_max_seconds),
            )
            self.relay_server = RelayServer(endpoint, limits)
            self.relay_server.attach()
        self.keepalive = Keepalive(endpoint.send_raw, self._direct_peers)
        endpoint.set_handler(REACH_PROTOCOL, self._serve_reach)

    def stun_servers(self) -> list[Address]:
        texts = self.cfg.stun_servers or self.ctx.config.network.bootstrap
        return [parse_hostport(t) for t in texts][:2]

    async def run(self) -> None:
        assert self.keepalive is not None
        loop = asyncio.get_running_loop()
        self._tasks.append(asyncio.create_task(self.keepalive.run()))
        next_check = loop.time()
        retry = RETRY_MIN
        try:
            while True:
                if loop.time() >= next_check:
                    report = await self.check()
                    if report is None and self.stun_servers():
                        next_check = loop.time() + min(retry, self.cfg.rediscover_s)
                        retry *= 2
                    else:
                        next_check = loop.time() + self.cfg.rediscover_s
                        retry = RETRY_MIN
                    if (
                        report is not None
                        and report.nat_class != NatClass.PUBLIC
                        and self.binding_lifetime is None
                        and (self._measuring is None or self._measuring.done())
                    ):
                        self._measuring = asyncio.create_task(self._measure())
                        self._tasks.append(self._measuring)
                if self.report is not None and self.report.nat_class != NatClass.PUBLIC:
                    await self._reserve_relays()
                await asyncio.sleep(max(0.0, min(RELAY_CHECK_S, next_check - loop.time())))
        finally:
            for task in self._tasks:
                task.cancel()
            if self.mapper is not None:
                with contextlib.suppress(Exception):
                    await self.mapper.close()
            if self.traversal is not None:
                await self.traversal.relays.close()
            if self.stun is not None:
                self.stun.close()

    async def _measure(self) -> None:
        """Measure how long the router keeps idle bindings and size keepalives from it.

        Two sockets of its own: the node's port is never idle towards the STUN servers,
        which are also its bootstrap peers and relays."""
        assert self.keepalive is not None
        servers = self.stun_servers()
        if not servers:
            return
        primary = await open_stun_socket(("0.0.0.0", 0))
        probe = await open_stun_socket(("0.0.0.0", 0))
        try:
            self.binding_lifetime = await measure_binding_lifetime(
                primary.agent, probe.agent, servers[0]
            )
        except NatError as exc:
            _log.info("binding_lifetime_unknown", error=str(exc))
            return
        finally:
            primary.close()
            probe.close()
        self.keepalive.interval = interval_for(self.binding_lifetime)
        _log.info("keepalive_sized", interval=self.keepalive.interval)

    async def _reserve_relays(self) -> None:
        """Hold reservations on the bootstrap peers so others can reach us through them."""
        assert self.endpoint is not None and self.traversal is not None
        before = self.relay_addresses()
        for text in self.ctx.config.network.bootstrap:
            addr = parse_hostport(text)
            conn = self.relay_conns.get(addr)
            if conn is not None and self._reserved(conn):
                continue
            try:
                if conn is None or conn.is_closed:
                    conn = await self.endpoint.connect(addr, timeout=5.0)
                await self.traversal.relays.reserve(conn)
            except Exception as exc:  # a relay that is down or full: others may do
                _log.info("relay_reservation_failed", relay=text, error=str(exc))
                continue
            self.relay_conns[addr] = conn
        if self.relay_addresses() != before:
            overlay = self.ctx.services.get("overlay")
            refresh = getattr(overlay, "refresh_record", None)
            if callable(refresh):
                refresh()

    def _direct_peers(self) -> list[Address]:
        if self.endpoint is None or self.traversal is None:
            return []
        return [
            c.remote_address
            for c in self.endpoint.connections
            if self.traversal.path_of(c) != "relayed"
        ]

    def candidates(self) -> list[Address]:
        """Our addresses for hole punching: mapped, port-mapped, local, predicted."""
        out: list[Address] = []
        if self.mapper is not None and self.mapper.external is not None:
            out.append(self.mapper.external)
        report = self.report
        if report is not None and report.public_address is not None:
            out.append(report.public_address)
            if not report.endpoint_independent:
                out.extend(predicted(report.public_address))
        if self.endpoint is not None:
            host, port = self.endpoint.local_address
            if host not in ("0.0.0.0", "::"):
                out.append((host, port))  # bound to one address (a loopback devnet, say)
            else:
                ips = sorted(local_ips())
                out.extend((h, port) for h in ips if ":" not in h and not h.startswith("127."))
        return list(dict.fromkeys(out))

    def session_with(self, node_id: bytes) -> Connection | None:
        """An open session with ``node_id``, a direct one if there are several."""
        assert self.endpoint is not None
        conns = [c for c in self.endpoint.connections if c.peer_id == node_id and not c.is_closed]
        conns.sort(key=lambda c: self.path_of(c) == "relayed")
        return conns[0] if conns else None

    async def connect_record(self, record: NodeRecord) -> Connection:
        """A session with the node of ``record``: the open one, else a new one (direct, or
        relayed and then upgraded). Concurrent calls for one node share one attempt, so DHT
        lookups running side by side do not open a session each."""
        conn = self.session_with(record.node_id)
        if conn is not None:
            return conn
        pending = self._connecting.get(record.node_id)
        if pending is None:
            pending = asyncio.ensure_future(self._connect_record(record))
            self._connecting[record.node_id] = pending
            pending.add_done_callback(lambda f: self._connecting.pop(record.node_id, None))
        return await asyncio.shield(pending)

    async def _connect_record(self, record: NodeRecord) -> Connection:
        assert self.endpoint is not None and self.traversal is not None
        addresses = [parse_hostport(a) for a in record.addresses]
        relays: list[Connection] = []
        boards: list[Address] = []
        for text in record.relays:
            kind, where = relay_kind(text)
            try:
                addr = parse_hostport(where)
            except ValueError:
                continue
            if kind == RELAY_MICROPYTHON:
                boards.append(addr)  # an allocation forwarding datagrams to the node unchanged
                continue
            conn = self.relay_conns.get(addr)
            if conn is None or conn.is_closed:
                try:
                    conn = await self.endpoint.connect(addr, timeout=5.0)
                except Exception:  # try the next relay
                    continue
                self.relay_conns[addr] = conn
            relays.append(conn)
        try:
            return await self.traversal.connect(
                record.public_key, addresses, record.nat_class, relays
            )
        except NatError as exc:
            if not boards:
                raise
            errors = [str(exc)]
        for addr in boards:
            try:
                conn = await self.endpoint.connect(
                    addr, peer_public_key=record.public_key, timeout=5.0
                )
                self.board_paths.add(addr)
                return conn
            except Exception as exc:  # a board that is gone or whose offer was taken
                errors.append(f"relay board {addr[0]}:{addr[1]}: {exc}")
        raise NatError("; ".join(errors))

    async def reach(self, node_id: bytes, size: int = 1024, fresh: bool = False) -> dict[str, Any]:
        """Find ``node_id`` through the DHT, connect (or reuse the session), echo ``size``
        bytes both ways and report the path; ``fresh`` closes the sessions with it first, so
        the check times a new connection. Raises NatError when the node cannot be found or
        reached."""
        assert self.endpoint is not None and self.traversal is not None
        if not 0 < size <= REACH_MAX:
            raise NatError(f"reach payload of {size} bytes: use 1 to {REACH_MAX}")
        loop = asyncio.get_running_loop()
        if fresh:
            for old in [c for c in self.endpoint.connections if c.peer_id == node_id]:
                await old.close("reconnect for a reachability check")
            self.traversal.opened.pop(node_id, None)
        began = loop.time()
        conn = self.session_with(node_id)
        if conn is None:
            overlay = self.ctx.services.get("overlay")
            find = getattr(overlay, "find_record", None)
            if not callable(find):
                raise NatError("reaching a node needs the overlay service; it is not running")
            record = await find(node_id)
            if record is None:
                raise NatError(f"node {encode_id(node_id)} is not in the DHT")
            conn = await asyncio.wait_for(self.connect_record(record), REACH_TIMEOUT)
        payload = secrets.token_bytes(size)
        stream = await conn.open_stream(REACH_PROTOCOL)
        try:
            stream.write(payload)
            stream.write_eof()
            echoed = await asyncio.wait_for(stream.read(), REACH_TIMEOUT)
        finally:
            stream.close()
        if echoed != payload:
            raise NatError(f"node {encode_id(node_id)} echoed {len(echoed)} wrong bytes")
        ttfb = loop.time() - began
        await self.traversal.settled(node_id)
        addr = conn.remote_address
        return {
            "node_id": encode_id(node_id),
            "path": self.path_of(conn),
            "opened": self.traversal.opened.get(node_id),
            "address": f"{addr[0]}:{addr[1]}",
            "echo_s": round(ttfb, 4),
            "rtt_ms": round(conn.rtt * 1000, 2) if conn.rtt is not None else None,
            "bytes": size,
        }

    async def _serve_reach(self, conn: Connection, stream: Stream) -> None:
        got = b""
        while len(got) <= REACH_MAX:
            chunk = await asyncio.wait_for(stream.read(REACH_MAX + 1 - len(got)), REACH_TIMEOUT)
            if not chunk:
                break
            got += chunk
        if len(got) > REACH_MAX:
            stream.reset()
            return
        stream.write(got)
        stream.write_eof()
        await stream.drain()

    def _reserved(self, conn: Connection) -> bool:
        """Whether ``conn`` (to a relay) carries our reservation, not just our own traffic."""
        if conn.is_closed or self.traversal is None:
            return False
        stream = self.traversal.relays.reservations.get(conn.peer_id)
        return stream is not None and stream.connection is conn

    def relay_usage(self) -> list[RelayUse]:
        """Bytes relays moved for us since start, per relay (for paying them)."""
        return [] if self.traversal is None else list(self.traversal.relays.usage.values())

    def relay_addresses(self) -> list[str]:
        """Relays that hold a reservation for us, then the open allocations on our MicroPython
        relay boards (``mp:HOST:PORT``), for our DHT record."""
        out = [f"{h}:{p}" for (h, p), c in self.relay_conns.items() if self._reserved(c)]
        boards = getattr(self.ctx.services.get("relays"), "record_offers", None)
        if callable(boards):
            out.extend(str(b) for b in boards())
        return out

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
            and (self._mapping is None or self._mapping.done())
        ):
            # in the background: a router without PCP, NAT-PMP or UPnP takes seconds to say so
            self._mapping = asyncio.create_task(self._map_port())
            self._tasks.append(self._mapping)
        overlay = self.ctx.services.get("overlay")
        refresh = getattr(overlay, "refresh_record", None)
        if changed and callable(refresh):
            refresh()
        self.discovered.set()
        return report

    async def _map_port(self) -> None:
        assert self.endpoint is not None
        mapper = PortMapper(self.endpoint.local_address[1], self.cfg.mapping_lifetime_s)
        try:
            await mapper.start()
        except NatError as exc:
            _log.info("port_mapping_unavailable", error=str(exc))
            return
        self.mapper = mapper
        overlay = self.ctx.services.get("overlay")
        refresh = getattr(overlay, "refresh_record", None)
        if callable(refresh):
            refresh()

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
        if self.traversal is not None and self.traversal.path_of(conn) == "relayed":
            return "relayed"
        carries = getattr(self.ctx.services.get("relays"), "carries", None)
        if conn.remote_address in self.board_paths or (
            callable(carries) and carries(conn.remote_address)
        ):
            return "relayed"  # through a relay board: ours (inbound) or the peer's
        if self.mapper is not None and self.mapper.external is not None:
            return "port-mapped"
        return "direct"

    def status(self) -> dict[str, Any]:
        return {
            **self.nat_info(),
            "report": self.report.to_json() if self.report else None,
            "error": self.last_error,
            "stun_server": self.stun.server.counters if self.stun and self.stun.server else None,
            "binding_lifetime_s": self.binding_lifetime,
            "keepalive_s": self.keepalive.interval if self.keepalive else None,
            "traversal": self.traversal.counters if self.traversal else None,
            "relay": (
                {**self.relay_server.counters, "active": self.relay_server.active}
                if self.relay_server
                else None
            ),
            "relay_reservations": self.relay_addresses(),
        }
