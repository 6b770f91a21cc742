"""Reaching a peer: direct when it is reachable, else relayed, then upgraded by hole punching.

:meth:`Traversal.connect` dials the peer's addresses directly when its record says it can be
reached unsolicited (public, full cone, or a router port mapping), otherwise at once through a
relay. Over a relayed session the two sides then run the upgrade (as libp2p's DCUtR does):
on a ``punch`` stream they swap candidates (addresses seen by STUN, port-mapped and local
ones, plus predicted ports for a symmetric mapping) and one-time STUN credentials, and both
send authenticated STUN binding checks to every candidate of the other at once, retrying with
back-off. The first check answered with a valid MESSAGE-INTEGRITY proves a working two-way
path; the side that got it moves the session onto it (``Connection.migrate``) and the
other side's transport follows after validating the new path.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from node import log
from node.transport.nat.aio import StunAgent
from node.transport.nat.errors import NatError, StunTimeout
from node.transport.nat.relay import RelayClient
from node.transport.nat.stun import Address

if TYPE_CHECKING:
    from node.transport.endpoint import Connection, Endpoint, Stream

PROTOCOL = "punch"
MAX_OFFER = 4096
MAX_CANDIDATES = 16
CHECK_RTO = 0.1
CHECK_ATTEMPTS = 7  # 0.1 s doubling: the last check leaves 6.3 s after the first
PREDICTED_PORTS = 3
DIRECT_CLASSES = frozenset({"public", "full-cone"})
FOLLOW_GRACE = 1.0  # seconds to let a session follow its peer off a closed relayed path

_log = log.get_logger(__name__)


def encode_offer(ufrag: str, pwd: str, candidates: list[Address]) -> bytes:
    cands = [f"{h}:{p}" for h, p in candidates[:MAX_CANDIDATES]]
    return json.dumps({"ufrag": ufrag, "pwd": pwd, "candidates": cands}).encode()


def decode_offer(data: bytes) -> tuple[str, str, list[Address]]:
    """Parse a peer's offer; raises NatError on anything malformed."""
    if len(data) > MAX_OFFER:
        raise NatError(f"punch offer of {len(data)} bytes exceeds {MAX_OFFER}")
    try:
        doc = json.loads(data)
        ufrag, pwd, raw = doc["ufrag"], doc["pwd"], doc["candidates"]
        if not (isinstance(ufrag, str) and isinstance(pwd, str) and isinstance(raw, list)):
            raise TypeError("wrong field types")
        if not (0 < len(ufrag) <= 64 and 16 <= len(pwd) <= 128):
            raise ValueError("ufrag or pwd of a bad length")
        candidates = []
        for text in raw[:MAX_CANDIDATES]:
            host, _, port = str(text).rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"bad candidate {text!r}")
            candidates.append((host.strip("[]"), int(port)))
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise NatError(f"malformed punch offer: {exc}") from None
    return ufrag, pwd, candidates


async def _write_msg(stream: Stream, data: bytes) -> None:
    stream.write(len(data).to_bytes(2, "big") + data)
    await stream.drain()


async def _read_msg(stream: Stream) -> bytes:
    length = int.from_bytes(await stream.readexactly(2), "big")
    if length > MAX_OFFER:
        raise NatError(f"punch message of {length} bytes exceeds {MAX_OFFER}")
    return await stream.readexactly(length)


class Traversal:
    """Direct, relayed and upgraded connections for one endpoint."""

    def __init__(
        self,
        endpoint: Endpoint,
        stun: StunAgent,
        relay_client: RelayClient,
        candidates: Callable[[], list[Address]],
        credentials: dict[str, bytes],
    ) -> None:
        self.endpoint = endpoint
        self.stun = stun
        self.relays = relay_client
        self.candidates = candidates
        self.credentials = credentials
        self.upgraded: dict[bytes, Address] = {}
        self.upgrading: dict[bytes, asyncio.Task[object]] = {}
        """Upgrade attempts in progress (either side), by peer id."""
        self.opened: dict[bytes, str] = {}
        """How the latest session we opened to each peer started: direct or relayed."""
        self.counters = {
            "direct": 0,
            "relayed": 0,
            "punched": 0,
            "punch_failed": 0,
            "relay_replaced": 0,
        }

    def attach(self) -> None:
        self.endpoint.set_handler(PROTOCOL, self._serve_punch)
        self.relays.attach()

    def path_of(self, conn: Connection) -> str:
        return "relayed" if self.relays.is_relayed(conn.remote_address) else "direct"

    async def connect(
        self,
        peer_public_key: bytes,
        addresses: list[Address],
        nat_class: str,
        relays: list[Connection],
        *,
        direct_timeout: float = 2.0,
        upgrade: bool = True,
    ) -> Connection:
        """A session with the peer: direct if it can take one, else relayed (then upgraded)."""
        errors: list[str] = []
        if nat_class in DIRECT_CLASSES or not relays:
            for addr in addresses:
                try:
                    conn = await self.endpoint.connect(
                        addr, peer_public_key=peer_public_key, timeout=direct_timeout
                    )
                except Exception as exc:  # unreachable address: try the next way
                    errors.append(f"{addr[0]}:{addr[1]}: {exc}")
                    continue
                self.counters["direct"] += 1
                self.opened[conn.peer_id] = "direct"
                return conn
        from node.identity import node_id_of

        target = node_id_of(peer_public_key)
        for relay in relays:
            try:
                shim = await self.relays.open_path(relay, target)
                conn = await self.endpoint.connect(shim, peer_public_key=peer_public_key)
            except Exception as exc:  # a dead or full relay: try the next one
                errors.append(f"relay {relay.peer_id.hex()[:12]}: {exc}")
                continue
            self.counters["relayed"] += 1
            self.opened[conn.peer_id] = "relayed"
            self._watch(conn, shim, target, relays, relay.peer_id)
            if upgrade:
                self._track(conn.peer_id, asyncio.create_task(self.upgrade(conn)))
            return conn
        raise NatError("cannot reach peer: " + "; ".join(errors or ["no address and no relay"]))

    def _track(self, peer_id: bytes, task: asyncio.Task[object]) -> None:
        self.upgrading[peer_id] = task

        def done(t: asyncio.Task[object]) -> None:
            if self.upgrading.get(peer_id) is t:
                del self.upgrading[peer_id]
            if not t.cancelled():
                t.exception()

        task.add_done_callback(done)

    async def settled(self, peer_id: bytes, timeout: float = 15.0) -> None:
        """Wait (at most ``timeout``) for an upgrade of the session with ``peer_id`` to end."""
        task = self.upgrading.get(peer_id)
        if task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(task), timeout)

    def _watch(
        self,
        conn: Connection,
        shim: Address,
        target: bytes,
        relays: list[Connection],
        relay_id: bytes,
    ) -> None:
        """When the relayed path dies while the session still uses it, move to another relay
        (never back to the one that dropped it: it may have cut us for a limit)."""
        task = self.relays.shims.get(shim)
        if task is None:
            return

        def died(_: object) -> None:
            if not conn.is_closed and conn.remote_address == shim:
                others = [r for r in relays if r.peer_id != relay_id]
                spawned = asyncio.ensure_future(self._lost(conn, shim, target, others))
                spawned.add_done_callback(lambda t: t.cancelled() or t.exception())

        task.add_done_callback(died)
        guard = asyncio.ensure_future(self._guard(conn, shim, target, relays, relay_id))
        guard.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _guard(
        self, conn: Connection, shim: Address, target: bytes, relays: list[Connection],
        relay_id: bytes,
    ) -> None:  # fmt: skip
        """Move a relayed session off a relay that went silent (a relay that died without a
        word): a session silent for half its idle timeout while keepalives run has lost its
        path, and moving it now beats the idle timeout that would end it at both ends. Closes
        the relayed path when the session ends."""
        while not conn.is_closed and conn.remote_address == shim:
            silent, idle = conn.silence
            if silent > idle / 2:
                _log.info("relay_silent", peer=conn.peer_id.hex()[:16], silent_s=round(silent, 1))
                others = [r for r in relays if r.peer_id != relay_id]
                await self._replace(conn, target, others)
                if conn.remote_address != shim:
                    self.relays.close_path(shim)
                return
            await asyncio.sleep(max(0.2, idle / 10))
        if conn.is_closed:
            self.relays.close_path(shim)  # the session ended: free the relay's slot

    async def _lost(
        self, conn: Connection, shim: Address, target: bytes, relays: list[Connection]
    ) -> None:
        # The peer closes the relayed path once it has punched a direct one; our transport
        # follows the session there when the peer's packets arrive. Replace the relay only if
        # the session is still on the dead path when any upgrade has ended.
        await self.settled(conn.peer_id)
        await asyncio.sleep(FOLLOW_GRACE)
        if not conn.is_closed and conn.remote_address == shim:
            await self._replace(conn, target, relays)

    async def _replace(self, conn: Connection, target: bytes, relays: list[Connection]) -> None:
        for relay in relays:
            if relay.is_closed:
                continue
            try:
                shim = await self.relays.open_path(relay, target)
            except Exception as exc:  # this relay cannot help either: try the next
                _log.info("relay_replace_failed", relay=relay.peer_id.hex()[:12], error=str(exc))
                continue
            conn.migrate(shim)
            self.counters["relay_replaced"] += 1
            _log.info("relay_replaced", peer=conn.peer_id.hex()[:16])
            self._watch(conn, shim, target, relays, relay.peer_id)
            return
        _log.warning("relay_lost", peer=conn.peer_id.hex()[:16])

    def _local_offer(self) -> tuple[str, str, list[Address]]:
        ufrag = secrets.token_hex(4)
        pwd = secrets.token_hex(16)
        return ufrag, pwd, self.candidates()

    async def upgrade(self, conn: Connection) -> Address | None:
        """Punch a direct path for a relayed session and move the session onto it."""
        ufrag, pwd, cands = self._local_offer()
        stream = await conn.open_stream(PROTOCOL)
        try:
            await _write_msg(stream, encode_offer(ufrag, pwd, cands))
            their_ufrag, their_pwd, theirs = decode_offer(await _read_msg(stream))
            addr = await self._checks(ufrag, pwd, their_ufrag, their_pwd, theirs)
        finally:
            stream.close()
        return self._finish(conn, addr, len(theirs))

    def _finish(self, conn: Connection, addr: Address | None, tried: int) -> Address | None:
        if addr is None:
            self.counters["punch_failed"] += 1
            _log.info("punch_failed", peer=conn.peer_id.hex()[:16], candidates=tried)
            return None
        # either side that proves a path moves the session and drops the relayed one, so the
        # other side sees packets only on the direct path and follows it
        old = conn.remote_address
        conn.migrate(addr)
        self.relays.close_path(old)
        self.upgraded[conn.peer_id] = addr
        self.counters["punched"] += 1
        _log.info("punched", peer=conn.peer_id.hex()[:16], address=f"{addr[0]}:{addr[1]}")
        return addr

    async def _serve_punch(self, conn: Connection, stream: Stream) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._track(conn.peer_id, task)
        their_ufrag, their_pwd, theirs = decode_offer(await _read_msg(stream))
        ufrag, pwd, cands = self._local_offer()
        await _write_msg(stream, encode_offer(ufrag, pwd, cands))
        # our checks open our NAT towards the initiator, so its checks get through too
        addr = await self._checks(ufrag, pwd, their_ufrag, their_pwd, theirs)
        if addr is not None or conn.peer_id not in self.upgraded:
            self._finish(conn, addr, len(theirs))

    async def _checks(
        self, ufrag: str, pwd: str, their_ufrag: str, their_pwd: str, theirs: list[Address]
    ) -> Address | None:
        username_in = f"{ufrag}:{their_ufrag}"
        self.credentials[username_in] = pwd.encode()
        try:
            return await self._first_answer(f"{their_ufrag}:{ufrag}", their_pwd.encode(), theirs)
        finally:
            # keep answering the peer's checks a little longer, then forget the secret
            asyncio.get_running_loop().call_later(
                10.0, lambda: self.credentials.pop(username_in, None)
            )

    async def _first_answer(
        self, username: str, key: bytes, theirs: list[Address]
    ) -> Address | None:
        async def check(addr: Address) -> Address:
            result = await self.stun.binding(
                addr,
                username=username,
                integrity_key=key,
                rto=CHECK_RTO,
                attempts=CHECK_ATTEMPTS,
                final_wait=0.5,
            )
            return result.source

        tasks = [asyncio.create_task(check(a)) for a in dict.fromkeys(theirs)]
        try:
            for next_done in asyncio.as_completed(tasks):
                with contextlib.suppress(StunTimeout, NatError):
                    return await next_done
            return None
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def predicted(mapped: Address, count: int = PREDICTED_PORTS) -> list[Address]:
    """Ports a sequential symmetric NAT is likely to give next (port prediction)."""
    host, port = mapped
    return [(host, p) for p in range(port + 1, port + 1 + count) if p < 65536]
