"""The agent's "overlay" service: the Kademlia core driven over the transport's streams.

Each DHT RPC is one stream of protocol ``dht`` on a Noise session with the peer: the request
and the answer are each sent as a 4-byte big-endian length and the message. The session
authenticates the peer, so the core is always told who really sent what. Other services call
:meth:`OverlayService.closest_nodes`, :meth:`provide`, :meth:`find_providers` and
:meth:`find_node`. The routing table is saved in ``state.db`` and reloaded at start.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import struct
import time
from typing import TYPE_CHECKING, Any

from node import log, state
from node.config import parse_hostport
from node.overlay import records, wire
from node.overlay.dht import Kademlia, LookupDone, OutRequest
from node.overlay.errors import LookupFailed, OverlayError, WireError
from node.overlay.records import NodeRecord, sign_record

if TYPE_CHECKING:
    from node.agent import AgentContext
    from node.transport.endpoint import Connection, Endpoint, Stream

PROTOCOL = "dht"
CONNECT_TIMEOUT = 5.0
SAVE_INTERVAL = 300.0
BOOTSTRAP_RETRY = 30.0

_log = log.get_logger(__name__)

MIGRATIONS: list[state.Migration] = [
    "CREATE TABLE IF NOT EXISTS overlay_contacts ("
    " node_id BLOB PRIMARY KEY, record BLOB NOT NULL, last_seen REAL NOT NULL)",
]


async def read_frame(stream: Stream) -> bytes:
    (length,) = struct.unpack("!I", await stream.readexactly(4))
    if length > wire.MAX_MESSAGE:
        raise WireError(f"DHT frame of {length} bytes exceeds {wire.MAX_MESSAGE}")
    return await stream.readexactly(length)


def write_frame(stream: Stream, data: bytes) -> None:
    stream.write(struct.pack("!I", len(data)) + data)


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return False


class OverlayService:
    """Kademlia over the node's transport endpoint."""

    name = "overlay"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        self.cfg = ctx.config.overlay
        self.core: Kademlia | None = None
        self.endpoint: Endpoint | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: dict[int, asyncio.Future[LookupDone]] = {}
        self._seq = int(time.time())
        self.bootstrapped = asyncio.Event()
        self._announce: asyncio.Task[None] | None = None
        self._announce_again = False
        self.announced_seq = 0
        """Seq of our record as last carried to our closest nodes."""

    # -- lifecycle ----------------------------------------------------------------------------

    def own_addresses(self) -> tuple[str, ...]:
        """Addresses for our record: NAT-discovered public ones first, then the local one."""
        out: list[str] = []
        nat = self.ctx.services.get("nat")
        public = getattr(nat, "public_addresses", None)
        if callable(public):
            out.extend(str(a) for a in public())
        if self.endpoint is not None:
            host, port = self.endpoint.local_address
            if not _is_wildcard(host):
                out.append(f"{host}:{port}")
        return tuple(dict.fromkeys(out))[: records.MAX_ADDRESSES]

    def make_record(self) -> NodeRecord:
        nat = self.ctx.services.get("nat")
        nat_class = ""
        relays: tuple[str, ...] = ()
        info = getattr(nat, "nat_info", None)
        if callable(info):
            nat_class = str(info().get("class") or "")
        offers = getattr(nat, "relay_addresses", None)
        if callable(offers):
            relays = tuple(str(r) for r in offers())[: records.MAX_RELAYS]
        self._seq += 1
        return sign_record(
            self.ctx.identity,
            addresses=self.own_addresses(),
            nat_class=nat_class,
            relays=relays,
            seq=self._seq,
            expires=int(time.time()) + self.cfg.record_lifetime_s,
        )

    def refresh_record(self) -> None:
        """Re-sign our record (the NAT service calls this when addresses, class or relays
        change) and, once joined, announce it: a lookup of our own id carries the new record
        to the nodes closest to us, which are the ones others ask for it."""
        if self.core is None:
            return
        self.core.set_record(self.make_record())
        if self.bootstrapped.is_set() and self._loop is not None:
            if self._announce is not None and not self._announce.done():
                self._announce_again = True
                return
            self._announce = self._loop.create_task(self._announce_record())

    async def _announce_record(self) -> None:
        assert self.core is not None
        while True:
            self._announce_again = False
            try:
                await self.find_node(self.core.node_id)
            except OverlayError as exc:
                _log.info("dht_announce_failed", error=str(exc))
            self.announced_seq = self.core.record.seq
            if not self._announce_again:
                return

    async def start(self) -> None:
        if self.core is not None:
            return
        transport = self.ctx.services.get("transport")
        endpoint = getattr(transport, "endpoint", None)
        if endpoint is None:
            raise OverlayError("the overlay needs the transport service; it is not configured")
        self.endpoint = endpoint
        self._loop = asyncio.get_running_loop()
        self.core = Kademlia(
            self.make_record(),
            k=self.cfg.k,
            alpha=self.cfg.alpha,
            rpc_timeout=self.cfg.rpc_timeout_s,
            provider_ttl=self.cfg.provider_ttl_s,
            republish_interval=self.cfg.republish_s,
            refresh_interval=self.cfg.refresh_s,
            rng=random.SystemRandom(),
        )
        endpoint.set_handler(PROTOCOL, self._serve)
        state.migrate(self.ctx.db, "overlay", MIGRATIONS)
        self._load_contacts()

    async def run(self) -> None:
        try:
            await self._bootstrap_loop()
        finally:
            self._save_contacts()
            if self._timer is not None:
                self._timer.cancel()
            for task in list(self._tasks):
                task.cancel()
            if self._announce is not None:
                self._announce.cancel()

    def _now(self) -> float:
        # the core's clock is wall time: record expiries are Unix seconds
        return time.time()

    async def _bootstrap_loop(self) -> None:
        assert self.core is not None
        last_save = self._now()
        while True:
            if len(self.core.table) == 0 or not self.bootstrapped.is_set():
                await self.bootstrap()
            await asyncio.sleep(BOOTSTRAP_RETRY)
            if self._now() - last_save > SAVE_INTERVAL:
                self._save_contacts()
                last_save = self._now()

    async def bootstrap(self) -> int:
        """Ping the [network] bootstrap peers, then look up our own id; returns table size."""
        assert self.core is not None and self.endpoint is not None
        for text in self.ctx.config.network.bootstrap:
            addr = parse_hostport(text)
            try:
                conn = await self.endpoint.connect(addr, timeout=CONNECT_TIMEOUT)
                reply = await self._exchange(conn, self.core.bootstrap_request())
            except Exception as exc:  # a dead or wrong bootstrap peer: try the next
                _log.info("dht_bootstrap_unreachable", peer=text, error=str(exc))
                continue
            self.core.bootstrap_response(conn.peer_id, reply, self._now())
        if len(self.core.table):
            seq = self.core.record.seq
            await self.find_node(self.core.node_id)
            self.announced_seq = max(self.announced_seq, seq)
            self.bootstrapped.set()
            if self.core.record.seq != self.announced_seq and self._loop is not None:
                self._announce = self._loop.create_task(self._announce_record())
            self.ctx.events.emit(
                "info", "overlay", f"joined the DHT ({len(self.core.table)} contacts)"
            )
        return len(self.core.table)

    # -- persistence --------------------------------------------------------------------------

    def _load_contacts(self) -> None:
        assert self.core is not None
        now = time.time()
        rows = self.ctx.db.execute(
            "SELECT record FROM overlay_contacts ORDER BY last_seen DESC LIMIT 2000"
        ).fetchall()
        for (raw,) in rows:
            try:
                rec = records.parse_record(bytes(raw))
            except WireError:
                continue
            if rec.expires > now:
                self.core.add_contact(rec, self._now())
        if rows:
            _log.info("dht_contacts_loaded", count=len(self.core.table))

    def _save_contacts(self) -> None:
        if self.core is None:
            return
        now = time.time()
        rows = [(r.node_id, r.encode(), now) for r in self.core.table.all_records()]
        with self.ctx.db.conn:
            self.ctx.db.execute("DELETE FROM overlay_contacts")
            self.ctx.db.conn.executemany(
                "INSERT INTO overlay_contacts (node_id, record, last_seen) VALUES (?, ?, ?)", rows
            )

    # -- RPC plumbing -------------------------------------------------------------------------

    async def _serve(self, conn: Connection, stream: Stream) -> None:
        assert self.core is not None
        try:
            data = await asyncio.wait_for(read_frame(stream), self.cfg.rpc_timeout_s)
        except (WireError, asyncio.IncompleteReadError, TimeoutError):
            stream.close()
            return
        reply = self.core.handle_request(conn.peer_id, data, self._now())
        self._pump()
        if reply is not None:
            write_frame(stream, reply)
            await stream.drain()
        stream.write_eof()

    async def _exchange(self, conn: Connection, data: bytes) -> bytes:
        stream = await conn.open_stream(PROTOCOL)
        try:
            write_frame(stream, data)
            stream.write_eof()
            await stream.drain()
            return await asyncio.wait_for(read_frame(stream), self.cfg.rpc_timeout_s)
        finally:
            stream.close()

    async def _connection(self, record: NodeRecord) -> Connection:
        assert self.endpoint is not None
        for conn in self.endpoint.connections:
            if conn.peer_id == record.node_id:
                return conn
        nat = self.ctx.services.get("nat")
        reach = getattr(nat, "connect_record", None)
        if callable(reach):
            conn_any: Any = await reach(record)
            return conn_any  # type: ignore[no-any-return]
        last: Exception | None = None
        for text in record.addresses:
            try:
                addr = parse_hostport(text)
                return await self.endpoint.connect(
                    addr, peer_public_key=record.public_key, timeout=CONNECT_TIMEOUT
                )
            except Exception as exc:  # any failure: try the next address
                last = exc
        raise OverlayError(f"cannot reach {record.node_id.hex()[:16]}: {last}")

    async def _rpc(self, req: OutRequest) -> None:
        assert self.core is not None
        try:
            conn = await self._connection(req.dest)
            reply = await self._exchange(conn, req.data)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            _log.debug("dht_rpc_failed", peer=req.dest.node_id.hex()[:16], error=str(exc))
            self.core.request_failed(req.request_id, self._now())
        else:
            self.core.handle_response(req.request_id, req.dest.node_id, reply, self._now())
        self._pump()

    def _pump(self) -> None:
        assert self.core is not None and self._loop is not None
        for req in self.core.requests_to_send():
            task = self._loop.create_task(self._rpc(req))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while (event := self.core.next_event()) is not None:
            if isinstance(event, LookupDone):
                fut = self._waiters.pop(event.lookup_id, None)
                if fut is not None and not fut.done():
                    fut.set_result(event)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        when = self.core.get_timer()
        if when is not None:
            self._timer = self._loop.call_later(max(0.0, when - self._now()), self._on_timer)

    def _on_timer(self) -> None:
        assert self.core is not None
        self._timer = None
        self.core.handle_timer(self._now())
        self._pump()

    async def _wait(self, lookup_id: int) -> LookupDone:
        assert self._loop is not None
        fut: asyncio.Future[LookupDone] = self._loop.create_future()
        self._waiters[lookup_id] = fut
        self._pump()
        return await fut

    # -- API for other services ---------------------------------------------------------------

    def _core(self) -> Kademlia:
        if self.core is None:
            raise OverlayError("the overlay service has not started")
        return self.core

    async def find_node(self, node_id: bytes) -> NodeRecord | None:
        """The record of ``node_id`` if the DHT knows it."""
        core = self._core()
        done = await self._wait(core.find_node(node_id, self._now()))
        return next((r for r in done.nodes if r.node_id == node_id), None)

    async def find_record(self, node_id: bytes) -> NodeRecord | None:
        """The record of ``node_id``: from a lookup (answered or only passed along by others),
        else from the routing table."""
        core = self._core()
        done = await self._wait(core.find_node(node_id, self._now()))
        found = next((r for r in done.nodes if r.node_id == node_id), done.found)
        if found is not None:
            return found
        contact = self._core().table.get(node_id)
        return contact.record if contact is not None else None

    async def closest_nodes(self, key: bytes, n: int) -> list[NodeRecord]:
        """Up to ``n`` live nodes closest to ``key`` (placement of chunks)."""
        core = self._core()
        done = await self._wait(core.find_node(key, self._now()))
        return done.nodes[:n]

    async def provide(self, key: bytes) -> None:
        """Announce that this node holds ``key`` (republished until stop_providing)."""
        core = self._core()
        done = await self._wait(core.provide(key, self._now()))
        if not done.nodes:
            raise LookupFailed(
                "no DHT node answered, so the provider record was not stored; "
                "check [network] bootstrap and connectivity"
            )

    def stop_providing(self, key: bytes) -> None:
        self._core().stop_providing(key)

    async def find_providers(self, key: bytes) -> list[NodeRecord]:
        """Records of nodes that announced ``key``."""
        core = self._core()
        done = await self._wait(core.find_providers(key, self._now()))
        return done.providers

    def storage_peers(self) -> list[tuple[str, int]]:
        """First address of every node in the routing table (the storage service's peer list)."""
        out = []
        for rec in self.core.table.all_records() if self.core is not None else []:
            for text in rec.addresses[:1]:
                try:
                    out.append(parse_hostport(text))
                except ValueError:
                    continue
        return out

    def status(self) -> dict[str, Any]:
        if self.core is None:
            return {"state": "stopped"}
        return {
            "contacts": len(self.core.table),
            "provided_keys": len(self.core.provided),
            "stored_provider_keys": len(self.core.providers),
            "bootstrapped": self.bootstrapped.is_set(),
            "record": {
                "seq": self.core.record.seq,
                "announced_seq": self.announced_seq,
                "addresses": list(self.core.record.addresses),
                "nat_class": self.core.record.nat_class,
                "relays": list(self.core.record.relays),
            },
            **self.core.counters,
        }


__all__ = ["OverlayService", "read_frame", "write_frame"]
