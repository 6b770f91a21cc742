"""Relaying encrypted transport packets through a node both peers reach, with limits.

Protocol (transport streams, so the hop to the relay is itself a Noise session):

- ``relay`` stream, client to relay: one op byte. ``R`` (reserve): the relay remembers the
  client's connection so others can reach it; the stream stays open while the reservation
  holds. ``C`` + 32-byte node id (connect): the relay opens a ``relay-in`` stream to that
  node (which must hold a reservation), sends it the caller's node id, and when both accept,
  pipes frames between the two streams.
- Every answer is one status byte (``0`` ok, else an error) and a length-prefixed reason.
- After ``ok`` the stream carries frames: 2-byte length + one transport datagram.

Each peer puts a local UDP socket (a *shim*) between its own endpoint and the relayed stream:
datagrams the endpoint sends to the shim go out as frames; frames that arrive are sent from
the shim to the endpoint. The endpoint therefore runs an ordinary end-to-end Noise session
with the far peer over the relay, and the relay forwards only ciphertext. The relay enforces
bytes and seconds per relayed connection and a cap on concurrent ones.

Anything with the :class:`Pipe` methods (a transport stream, or a MicroPython relay link
wrapped by ``node.relays``) can carry the frames: see :func:`run_shim`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from node import log
from node.transport.nat.errors import RelayError
from node.transport.nat.stun import Address

if TYPE_CHECKING:
    from node.transport.endpoint import Connection, Endpoint, Stream

PROTOCOL = "relay"
PROTOCOL_IN = "relay-in"
OP_RESERVE = b"R"
OP_CONNECT = b"C"
MAX_FRAME = 1500
ANSWER_TIMEOUT = 10.0

_log = log.get_logger(__name__)


class Pipe(Protocol):
    """A reliable byte stream (the transport's Stream has these)."""

    async def readexactly(self, n: int) -> bytes: ...
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class RelayLimits:
    max_connections: int = 64
    """Relayed connections at once."""
    max_bytes: int = 256 << 20
    """Bytes (both ways) per relayed connection."""
    max_seconds: float = 3600.0
    """Lifetime of a relayed connection."""


async def read_answer(pipe: Pipe) -> None:
    """Read a status answer; raise RelayError with the relay's reason unless it is ok."""
    status, length = struct.unpack("!BH", await pipe.readexactly(3))
    reason = (await pipe.readexactly(length)).decode("utf-8", "replace") if length else ""
    if status != 0:
        raise RelayError(f"relay refused: {reason}")


def answer(pipe: Pipe, reason: str | None = None) -> None:
    raw = (reason or "").encode()[:200]
    pipe.write(struct.pack("!BH", 0 if reason is None else 1, len(raw)) + raw)


async def read_frame(pipe: Pipe) -> bytes:
    (length,) = struct.unpack("!H", await pipe.readexactly(2))
    if length > MAX_FRAME:
        raise RelayError(f"relayed frame of {length} bytes exceeds {MAX_FRAME}")
    return await pipe.readexactly(length)


def frame(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


@dataclass
class _Relayed:
    started: float
    bytes: int = 0
    cut: bool = False


@dataclass
class RelayServer:
    """Relays for peers; attach to the node's endpoint."""

    endpoint: Endpoint
    limits: RelayLimits = field(default_factory=RelayLimits)
    reservations: dict[bytes, Connection] = field(default_factory=dict)
    active: int = 0
    counters: dict[str, int] = field(
        default_factory=lambda: {"relayed_bytes": 0, "refused": 0, "cut_bytes": 0, "cut_time": 0}
    )

    def attach(self) -> None:
        self.endpoint.set_handler(PROTOCOL, self._handle)

    async def _handle(self, conn: Connection, stream: Stream) -> None:
        op = await stream.readexactly(1)
        if op == OP_RESERVE:
            self.reservations[conn.peer_id] = conn
            answer(stream)
            await stream.drain()
            try:
                await stream.read()  # held until the client closes it
            finally:
                if self.reservations.get(conn.peer_id) is conn:
                    del self.reservations[conn.peer_id]
            return
        if op != OP_CONNECT:
            answer(stream, f"unknown op {op!r}")
            return
        target = await stream.readexactly(32)
        reason = self._refusal(target)
        if reason is not None:
            self.counters["refused"] += 1
            answer(stream, reason)
            await stream.drain()
            stream.close()
            return
        self.active += 1
        try:
            out = await self.reservations[target].open_stream(PROTOCOL_IN)
            out.write(conn.peer_id)
            await asyncio.wait_for(read_answer(out), ANSWER_TIMEOUT)
            answer(stream)
            await stream.drain()
            await self._pipe(stream, out)
        except (RelayError, OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
            with contextlib.suppress(Exception):
                answer(stream, f"target did not accept: {exc}")
        finally:
            self.active -= 1
            stream.close()

    def _refusal(self, target: bytes) -> str | None:
        if self.active >= self.limits.max_connections:
            return f"relay full ({self.limits.max_connections} connections)"
        if target not in self.reservations:
            return "target holds no reservation on this relay"
        return None

    async def _pipe(self, a: Stream, b: Stream) -> None:
        loop = asyncio.get_running_loop()
        state = _Relayed(loop.time())

        async def copy(src: Stream, dst: Stream) -> None:
            while True:
                data = await read_frame(src)
                state.bytes += len(data)
                self.counters["relayed_bytes"] += len(data)
                if state.bytes > self.limits.max_bytes:
                    if not state.cut:
                        state.cut = True
                        self.counters["cut_bytes"] += 1
                    raise RelayError("relayed connection reached its byte limit")
                dst.write(frame(data))
                await dst.drain()

        tasks = [asyncio.create_task(copy(a, b)), asyncio.create_task(copy(b, a))]
        try:
            done, _ = await asyncio.wait(
                tasks, timeout=self.limits.max_seconds, return_when=asyncio.FIRST_COMPLETED
            )
            if not done:
                self.counters["cut_time"] += 1
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            a.close()
            b.close()


ByteCounter = Callable[[int], None]


class _Shim(asyncio.DatagramProtocol):
    def __init__(self, pipe: Pipe, endpoint_addr: Address, on_bytes: ByteCounter | None) -> None:
        self.pipe = pipe
        self.endpoint_addr = endpoint_addr
        self.on_bytes = on_bytes

    def datagram_received(self, data: bytes, addr: Any) -> None:
        if (addr[0], addr[1]) == self.endpoint_addr and len(data) <= MAX_FRAME:
            try:
                self.pipe.write(frame(data))
            except Exception as exc:  # the relayed stream is gone: the pump task ends too
                _log.debug("relayed_frame_dropped", error=str(exc))
                return
            if self.on_bytes is not None:
                self.on_bytes(len(data))


SocketFactory = Callable[[], socket.socket]


def _endpoint_target(endpoint: Endpoint) -> Address:
    host, port = endpoint.local_address
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    return host, port


async def run_shim(
    pipe: Pipe,
    endpoint: Endpoint,
    sock_factory: SocketFactory | None = None,
    on_bytes: ByteCounter | None = None,
) -> tuple[Address, asyncio.Task[None]]:
    """Join ``pipe`` to the endpoint through a local UDP socket; returns the socket's address
    (the relayed peer's address as the endpoint sees it) and the task that runs the pipe.
    ``on_bytes`` is told the size of every datagram carried, either way."""
    loop = asyncio.get_running_loop()
    target = _endpoint_target(endpoint)
    sock = (sock_factory or (lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)))()
    sock.bind((target[0], 0))
    sock.setblocking(False)
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _Shim(pipe, target, on_bytes), sock=sock
    )
    name = sock.getsockname()

    async def pump() -> None:
        try:
            while True:
                data = await read_frame(pipe)
                transport.sendto(data, target)
                if on_bytes is not None:
                    on_bytes(len(data))
        except (asyncio.IncompleteReadError, RelayError, OSError) as exc:
            _log.info("relayed_path_closed", reason=str(exc) or type(exc).__name__)
        finally:
            transport.close()
            pipe.close()

    return (name[0], name[1]), asyncio.create_task(pump())


@dataclass
class RelayUse:
    """Datagram bytes (both ways) a node moved through one relay since it started: what it
    pays that relay for (the storage service turns them into relay vouchers)."""

    public_key: bytes
    address: Address
    bytes: int = 0

    def add(self, n: int) -> None:
        self.bytes += n


class RelayClient:
    """Reserves a slot on relays and opens relayed paths to peers through them."""

    def __init__(self, endpoint: Endpoint, sock_factory: SocketFactory | None = None) -> None:
        self.endpoint = endpoint
        self.sock_factory = sock_factory
        self.shims: dict[Address, asyncio.Task[None]] = {}
        self.reservations: dict[bytes, Stream] = {}
        self.on_incoming: Callable[[Address, bytes], None] | None = None
        self.usage: dict[bytes, RelayUse] = {}
        """Bytes relayed for us, by relay node id."""

    def _use(self, relay: Connection) -> RelayUse:
        use = self.usage.get(relay.peer_id)
        if use is None:
            use = self.usage[relay.peer_id] = RelayUse(relay.peer_public_key, relay.remote_address)
        use.address = relay.remote_address
        return use

    def attach(self) -> None:
        self.endpoint.set_handler(PROTOCOL_IN, self._incoming)

    async def reserve(self, relay: Connection) -> None:
        """Hold a reservation on ``relay`` so peers can reach us through it."""
        stream = await relay.open_stream(PROTOCOL)
        stream.write(OP_RESERVE)
        await asyncio.wait_for(read_answer(stream), ANSWER_TIMEOUT)
        self.reservations[relay.peer_id] = stream

    def release(self, relay_id: bytes) -> None:
        stream = self.reservations.pop(relay_id, None)
        if stream is not None:
            stream.close()

    async def open_path(self, relay: Connection, target: bytes) -> Address:
        """A relayed path to ``target``: connect the endpoint to the returned address."""
        stream = await relay.open_stream(PROTOCOL)
        stream.write(OP_CONNECT + target)
        await asyncio.wait_for(read_answer(stream), ANSWER_TIMEOUT)
        use = self._use(relay)
        addr, task = await run_shim(stream, self.endpoint, self.sock_factory, use.add)
        self._track(addr, task)
        return addr

    def _track(self, addr: Address, task: asyncio.Task[None]) -> None:
        self.shims[addr] = task
        task.add_done_callback(lambda _: self.shims.pop(addr, None))

    async def _incoming(self, conn: Connection, stream: Stream) -> None:
        source = await stream.readexactly(32)
        use = self._use(conn)
        addr, task = await run_shim(stream, self.endpoint, self.sock_factory, use.add)
        self._track(addr, task)
        answer(stream)
        await stream.drain()
        if self.on_incoming is not None:
            self.on_incoming(addr, source)
        await task

    def close_path(self, addr: Address) -> None:
        """Stop relaying for the session at shim ``addr`` (it moved to a direct path)."""
        task = self.shims.pop(addr, None)
        if task is not None:
            task.cancel()

    def is_relayed(self, addr: Address) -> bool:
        return addr in self.shims

    async def close(self) -> None:
        for relay_id in list(self.reservations):
            self.release(relay_id)
        for task in list(self.shims.values()):
            task.cancel()
