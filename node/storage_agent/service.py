"""The agent service ``storage``: the chunk store, its peer protocol, background work, the
client workload, and the dashboard's earnings and storage figures.

Theory of operation: :meth:`StorageService.start` opens the store on the data disk (a missing
or swapped disk makes the service *degraded* rather than failing the agent), the index and the
ledger in state.db, and serves ``storage/1`` (on the transport's Endpoint when it has one,
else on TCP at the transport's port number). :meth:`run` then keeps these loops going: the
disk watch, the index rebuild when needed, scrub, garbage collection, peer discovery, and for
files this box placed: audits, vouchers and repair.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node import log, state
from node.config import parse_hostport
from node.limits import Restriction
from node.storage_agent import index, scrub, wire
from node.storage_agent.contracts import UNITS_PER_BCT, Contract
from node.storage_agent.errors import StorageError
from node.storage_agent.ledger import Ledger
from node.storage_agent.network import (
    Dialer,
    EndpointDialer,
    Peer,
    PeerUnreachable,
    TcpDialer,
    TcpServer,
    serve_stream,
)
from node.storage_agent.placer import Placer, PlacerSettings
from node.storage_agent.provider import Capacity, Provider
from node.storage_agent.reputation import THRESHOLDS
from node.storage_agent.store import VERIFY_FILE, ChunkStore, DiskProblem

if TYPE_CHECKING:
    from node.agent import AgentContext

_log = log.get_logger(__name__)
ORPHAN_GRACE = 3600.0
GC_INTERVAL = 60.0
GC_MIN_WAIT = 1.0
SCRUB_TICK = 5.0
SCRUB_BATCH = 32
PEER_REFRESH = 30.0
PEER_REFRESH_FAST = 2.0
REPAIR_INTERVAL = 30.0
LIMIT_REASON = "disk"
PAUSE_REASON = "storage_paused"


class StorageService:
    """Stores chunks for the network and places this box's own files on it."""

    name = "storage"

    def __init__(self, ctx: AgentContext) -> None:
        self.ctx = ctx
        cfg = ctx.config.storage
        root = Path(cfg.path) if cfg.path else ctx.data_dir
        self.store = ChunkStore(root, ctx.identity.node_id_text)
        index.setup(ctx.db)
        self.ledger = Ledger(ctx.db, ctx.identity.node_id, self.store.vouchers)
        self._relay_seen: dict[bytes, int] = {}
        allocation = int(index.get_meta(ctx.db, "allocation") or cfg.allocation_bytes)
        self.provider = Provider(
            node=ctx.identity,
            store=self.store,
            db=ctx.db,
            ledger=self.ledger,
            capacity=Capacity(allocation, cfg.reserve_percent / 100, cfg.client_quota_bytes),
            min_price_per_gib_month=int(cfg.min_price_per_gib_month * UNITS_PER_BCT),
            refuse_uploads=self._refusal,
            disk_problem=self._disk_problem,
        )
        self.degraded_reason: str | None = None
        self.paused = False
        self.ready = False
        self.rebuilding = False
        self.scrub_stats = scrub.ScrubStats()
        self.address: tuple[str, int] | None = None
        self._tcp: TcpServer | None = None
        self._dialer: Dialer = TcpDialer()
        self._peers: dict[tuple[str, int], Peer] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._repair_now = asyncio.Event()
        self._gc_now = asyncio.Event()
        self._next_gc = 0.0
        self.provider.on_stored = self._on_stored
        self.placer = Placer(
            ident=ctx.identity,
            dialer=self,
            peers=lambda: list(self._peers.values()),
            files_dir=self.store.files,
            tmp_dir=self.store.tmp,
            events=ctx.events,
            refresh=self.refresh_peers,
            settings=PlacerSettings(
                k=cfg.erasure_k,
                n=max(cfg.erasure_n, cfg.erasure_k),
                price_per_gib_month=cfg.price_per_gib_month,
                egress_price_per_gib=cfg.egress_price_per_gib,
                relay_price_per_gib=cfg.relay_price_per_gib,
                term=cfg.contract_days * 86400,
                audit_samples=cfg.audit_samples,
                repair_after_offline=cfg.repair_after_offline,
            ),
        )

    # -- the data disk --------------------------------------------------------------------

    def _disk_problem(self) -> str | None:
        if self.degraded_reason:
            return self.degraded_reason
        if self.ctx.limits.refuse_audits:
            return "audits paused: " + ", ".join(self.ctx.limits.why("refuse_audits"))
        return None

    def _refusal(self) -> str | None:
        if self.degraded_reason:
            return f"node is degraded ({self.degraded_reason}); uploads refused"
        if self.paused:
            return "the owner paused storage; uploads refused"
        if self.ctx.limits.refuse_uploads:
            why = ", ".join(self.ctx.limits.why("refuse_uploads"))
            return f"uploads refused by this box's work limits ({why}); see its dashboard events"
        return None

    def _set_degraded(self, reason: str | None) -> None:
        if reason == self.degraded_reason:
            return
        was = self.degraded_reason
        self.degraded_reason = reason
        if reason:
            self.ctx.limits.set(
                LIMIT_REASON, Restriction(refuse_uploads=True, pause_background=True)
            )
            self.ctx.events.emit("warning", "storage", f"storage degraded: {reason}")
            _log.warning("storage_degraded", reason=reason)
        else:
            self.ctx.limits.set(LIMIT_REASON, None)
            self.ctx.events.emit("info", "storage", f"data disk is back; storage resumed ({was})")
            _log.info("storage_recovered")

    def _open_store(self) -> None:
        chunks, _ = index.totals(self.ctx.db)
        known = chunks > 0 or index.get_meta(self.ctx.db, "store_initialised") is not None
        fresh = not (self.store.root / VERIFY_FILE).exists()
        self.store.initialise(expect_existing=known)
        index.set_meta(self.ctx.db, "store_initialised", self.store.node_id)
        if fresh:
            index.set_meta(self.ctx.db, index.INDEX_COMPLETE, str(time.time()))
        self.placer.load()

    async def _try_open(self) -> bool:
        try:
            await asyncio.to_thread(self._open_store)
        except (DiskProblem, OSError) as exc:
            self._set_degraded(str(exc))
            return False
        self.ready = True
        self._set_degraded(None)
        return True

    # -- service protocol -----------------------------------------------------------------

    async def start(self) -> None:
        if self.address is not None:
            return
        if not await self._try_open():
            _log.warning("storage_start_degraded", reason=self.degraded_reason)
        transport = self.ctx.services.get("transport")
        endpoint = getattr(transport, "endpoint", None)
        if endpoint is not None and hasattr(endpoint, "set_handler"):
            endpoint.set_handler(wire.PROTOCOL, self._endpoint_handler)
            self._dialer = EndpointDialer(endpoint)
            local = getattr(endpoint, "local_address", None)
            self.address = (local[0], local[1]) if local else None
        else:
            host, port = self._tcp_address(transport)
            self._tcp = TcpServer(self.provider, self._info, host, port)
            self.address = await self._tcp.start()
        if self.address is not None:
            self.ctx.urls["storage"] = f"{self.address[0]}:{self.address[1]}"

    def _tcp_address(self, transport: Any) -> tuple[str, int]:
        host, port = parse_hostport(self.ctx.config.network.listen)
        bound = getattr(transport, "address", None)
        if isinstance(bound, tuple) and len(bound) >= 2:
            host, port = str(bound[0]), int(bound[1])
        return host, port

    async def _endpoint_handler(self, conn: Any, stream: Any) -> None:
        try:
            await serve_stream(
                self.provider, stream, getattr(conn, "peer_public_key", None), self._info
            )
        finally:
            with contextlib.suppress(Exception):
                stream.close()

    def _info(self) -> wire.Info:
        free = max(0, self.provider.allocated_bytes() - self.provider.used_bytes())
        return wire.Info(self.ctx.identity.public_key, free, self._refusal() is None)

    async def request(
        self, address: tuple[str, int], msg: wire.Message, *, peer_key: bytes | None = None,
        timeout: float = 30.0,
    ) -> wire.Message:  # fmt: skip
        """One exchange with the node at ``address``; this node's own requests stay local."""
        if address == self.address or (
            peer_key is not None and peer_key == self.ctx.identity.public_key
        ):
            if isinstance(msg, wire.Hello):
                return self._info()
            pk = self.ctx.identity.public_key
            return await asyncio.to_thread(self.provider.handle, msg, pk, time.time())
        return await self._dialer.request(address, msg, peer_key=peer_key, timeout=timeout)

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._repair_now = asyncio.Event()
        self._gc_now = asyncio.Event()
        loops: list[Callable[[], Coroutine[Any, Any, None]]] = [
            self._disk_loop,
            self._maintenance_loop,
            self._scrub_loop,
            self._peer_loop,
            self._audit_loop,
            self._pay_loop,
            self._repair_loop,
        ]
        try:
            async with asyncio.TaskGroup() as tg:
                for loop in loops:
                    tg.create_task(loop())
        finally:
            if self._tcp is not None:
                await self._tcp.close()
                self._tcp = None
                self.address = None

    # -- loops ----------------------------------------------------------------------------

    async def _disk_loop(self) -> None:
        interval = self.ctx.config.storage.disk_check_interval
        while True:
            if not self.ready:
                await self._try_open()
            else:
                problem = await asyncio.to_thread(self.store.disk_problem)
                self._set_degraded(problem)
            await asyncio.sleep(interval)

    async def _maintenance_loop(self) -> None:
        """Rebuild the index (and ledger) when state.db lost them; then collect garbage."""
        while not self.ready:
            await asyncio.sleep(1.0)
        if index.get_meta(self.ctx.db, index.INDEX_COMPLETE) is None:
            await self.rebuild()
        while True:
            if not (self.ctx.limits.pause_background or self.paused or self.degraded_reason):
                try:
                    self.scrub_stats.collected += await asyncio.to_thread(
                        scrub.collect_garbage, self.provider, time.time(), ORPHAN_GRACE
                    )
                except (StorageError, OSError) as exc:
                    _log.warning("gc_failed", error=str(exc))
            # Armed before looking: a contract stored meanwhile that ends sooner wakes us.
            self._gc_now.clear()
            self._next_gc = time.time() + GC_INTERVAL
            wait = await self._until_next_gc()
            self._next_gc = min(self._next_gc, time.time() + wait)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._gc_now.wait(), wait)

    def _on_stored(self, contract: Contract) -> None:
        """Called from a worker thread: wake the collector if this contract ends sooner."""
        if contract.end + 1.0 < self._next_gc and self._loop is not None:
            self._next_gc = contract.end + 1.0
            self._loop.call_soon_threadsafe(self._gc_now.set)

    async def _until_next_gc(self) -> float:
        """Seconds to the next collection: soon after the next contract ends, at most a minute."""
        with contextlib.suppress(StorageError, OSError, sqlite3.Error):
            end = await asyncio.to_thread(scrub.next_expiry, self.provider)
            if end is not None:
                return min(GC_INTERVAL, max(GC_MIN_WAIT, end + 1.0 - time.time()))
        return GC_INTERVAL

    async def rebuild(self) -> dict[str, int]:
        """Rebuild the index from the chunk files in a thread at idle I/O priority."""
        self.rebuilding = True
        began = time.monotonic()
        self.ctx.events.emit("info", "storage", "rebuilding the storage index from chunk files")
        try:
            counts = await asyncio.to_thread(self._rebuild_thread)
            if self.ledger.empty():
                counts["vouchers"] = await asyncio.to_thread(self._rebuild_ledger)
        finally:
            self.rebuilding = False
        self.ctx.events.emit(
            "info", "storage",
            f"storage index rebuilt: {counts['chunks']} chunks, {counts['contracts']} contracts "
            f"in {time.monotonic() - began:.1f} s",
            **counts,
        )  # fmt: skip
        return counts

    def _rebuild_thread(self) -> dict[str, int]:
        scrub.idle_io_priority()
        db = state.open_state(self.ctx.data_dir / state.STATE_FILE, check=False)
        try:
            return index.rebuild(db, self.store, verify=True)
        finally:
            db.conn.close()

    def _rebuild_ledger(self) -> int:
        with self.provider.lock:
            return self.ledger.rebuild()

    async def _scrub_loop(self) -> None:
        max_age = self.ctx.config.storage.scrub_days * 86400
        while True:
            await asyncio.sleep(SCRUB_TICK)
            if not self.ready or self.rebuilding or self.degraded_reason:
                continue
            if self.ctx.limits.pause_background or self.paused:
                continue
            try:
                await asyncio.to_thread(
                    scrub.scrub_batch, self.provider, max_age, SCRUB_BATCH, self._on_damaged,
                    self.scrub_stats,
                )  # fmt: skip
            except (StorageError, OSError) as exc:
                _log.warning("scrub_failed", error=str(exc))

    def _on_damaged(self, cid: bytes) -> None:
        self.ctx.events.emit(
            "warning", "storage",
            f"chunk {cid.hex()[:16]}… failed its scrub (damaged); it was set aside and is "
            "re-created from the other shares of its file",
            chunk=cid.hex(),
        )  # fmt: skip
        for pf in self.placer.files.values():
            for p in pf.placements:
                if p.chunk == cid and p.node_key == self.ctx.identity.public_key:
                    p.lost = True
                    if self._loop is not None:
                        self._loop.call_soon_threadsafe(self._repair_now.set)

    async def _peer_loop(self) -> None:
        began = time.monotonic()
        while True:
            await self.refresh_peers()
            # Ask often while the network comes up together, then settle down.
            fast = time.monotonic() - began < PEER_REFRESH
            await asyncio.sleep(PEER_REFRESH_FAST if fast else PEER_REFRESH)

    def _peer_addresses(self) -> list[tuple[str, int]]:
        out = []
        if self.address is not None:
            out.append(self.address)
        for text in self.ctx.config.network.bootstrap:
            with contextlib.suppress(ValueError):
                out.append(parse_hostport(text))
        overlay = self.ctx.services.get("overlay")
        peers_of = getattr(overlay, "storage_peers", None)
        if callable(peers_of):
            with contextlib.suppress(Exception):
                out.extend((str(a[0]), int(a[1])) for a in peers_of())
        return list(dict.fromkeys(out))

    async def refresh_peers(self) -> int:
        """Ask every known address who it is; returns how many answered."""

        async def ask(addr: tuple[str, int]) -> None:
            try:
                answer = await self.request(addr, wire.Hello(), timeout=8.0)
            except PeerUnreachable:
                self._peers.pop(addr, None)
                return
            if isinstance(answer, wire.Info):
                self._peers[addr] = Peer(addr, answer.public_key, answer.accepting)
            else:
                self._peers.pop(addr, None)

        await asyncio.gather(*(ask(a) for a in self._peer_addresses()))
        return len(self._peers)

    async def _audit_loop(self) -> None:
        interval = self.ctx.config.storage.audit_interval
        while True:
            await asyncio.sleep(interval)
            await self._guarded("audit round", self.placer.audit_round)

    async def _pay_loop(self) -> None:
        interval = self.ctx.config.storage.pay_interval
        while True:
            await asyncio.sleep(interval)
            self.accrue_relaying()
            await self._guarded("voucher round", self.placer.pay_round)

    def accrue_relaying(self) -> None:
        """Owe the relays what they forwarded for us since the last round (the NAT service
        counts the bytes; a restart starts its counts again from zero)."""
        usage = getattr(self.ctx.services.get("nat"), "relay_usage", None)
        for use in usage() if usage is not None else ():
            seen = self._relay_seen.get(use.public_key, 0)
            delta = use.bytes - seen if use.bytes >= seen else use.bytes
            self._relay_seen[use.public_key] = use.bytes
            if delta > 0:
                self.placer.accrue_relay(use.public_key, use.address, delta)

    async def _guarded(self, what: str, step: Callable[[], Coroutine[Any, Any, Any]]) -> None:
        """Run one round of background work; a failure is reported, the loop goes on."""
        try:
            await step()
        except (StorageError, OSError) as exc:
            _log.warning("storage_round_failed", what=what, error=str(exc))
            self.ctx.events.emit("warning", "storage", f"{what} failed: {exc}")

    async def _repair_loop(self) -> None:
        interval = min(REPAIR_INTERVAL, self.ctx.config.storage.audit_interval)
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._repair_now.wait(), interval)
            self._repair_now.clear()
            await self._guarded("repair round", self.placer.repair_round)

    # -- owner's controls and dashboard figures --------------------------------------------

    async def set_allocation(self, nbytes: int) -> None:
        if nbytes < 0:
            raise ValueError("allocation must be zero (automatic) or a positive number of bytes")
        self.provider.capacity.allocation = nbytes
        index.set_meta(self.ctx.db, "allocation", str(nbytes))
        self.ctx.events.emit("info", "storage", f"storage allocation set to {nbytes} bytes")

    def pause(self, paused: bool) -> None:
        self.paused = paused
        self.ctx.limits.set(
            PAUSE_REASON,
            Restriction(refuse_uploads=True, pause_background=True) if paused else None,
        )
        word = "paused" if paused else "resumed"
        self.ctx.events.emit("info", "storage", f"storage {word} by the owner")

    def earnings(self) -> dict[str, Any]:
        with self.provider.lock:
            return self.ledger.earnings(time.time())

    def earnings_export(self, fmt: str) -> bytes:
        with self.provider.lock:
            return self.ledger.export(fmt)

    def storage(self) -> dict[str, Any]:
        now = time.time()
        with self.provider.lock:
            chunks, used = index.totals(self.ctx.db)
            contracts = index.list_contracts(self.ctx.db)
        allocated = self.provider.allocated_bytes()
        rep = self.provider.self_reputation.get(self.ctx.identity.public_key)
        return {
            "used_bytes": used,
            "allocated_bytes": allocated,
            "free_bytes": max(0, allocated - used),
            "chunks": chunks,
            "contracts": [
                {
                    "id": c["id"],
                    "client": c["client"],
                    "size": c["size"],
                    "price": c["price"] / UNITS_PER_BCT,
                    "start": float(c["start"]),
                    "end": float(c["end"]),
                    "state": "active" if c["end"] > now else "expired",
                }
                for c in contracts
            ],
            "scores": {
                "audit": rep.audit_score,
                "online": rep.online_score(),
                "suspension": rep.unknown_score,
                "thresholds": dict(THRESHOLDS),
            },
            "degraded": self.degraded_reason is not None,
            "degraded_reason": self.degraded_reason,
            "bandwidth": {
                "ingress_bytes": self.provider.counters.ingress_bytes,
                "egress_bytes": self.provider.counters.egress_bytes,
            },
        }

    def status(self) -> dict[str, Any]:
        chunks, used = index.totals(self.ctx.db) if self.ready else (0, 0)
        return {
            "address": self.ctx.urls.get("storage"),
            "degraded": self.degraded_reason,
            "rebuilding": self.rebuilding,
            "uploads_refused": self._refusal(),
            "chunks": chunks,
            "used_bytes": used,
            "peers": len(self._peers),
            "accepting_peers": sum(p.accepting for p in self._peers.values()),
            "scrubbed": self.scrub_stats.scrubbed,
            "damaged": self.scrub_stats.damaged,
            "collected": self.scrub_stats.collected,
            "contracts_released": self.provider.counters.released,
            "trees_rebuilt": self.provider.counters.trees_rebuilt + self.scrub_stats.trees_rebuilt,
            **self.placer.status(),
        }
