"""asyncio glue: one UDP socket driving an :class:`EndpointCore`, with stream objects.

The socket is read in batches (up to ``_READ_BATCH`` datagrams per wake-up) before the core's
output is flushed once, so one ACK covers a whole batch. A single ``loop.call_at`` timer
follows ``EndpointCore.get_timer()``. Streams behave like an asyncio StreamReader plus
StreamWriter; each starts with a one-byte length and the protocol name (``storage/1``) that
selects the handler on the accepting side.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from node import log
from node.identity import Identity
from node.transport.connection import (
    APPLICATION_CLOSED,
    NO_ERROR,
    STREAM_REFUSED,
    Address,
    ConnectionCore,
    State,
    Transmit,
    TransportConfig,
)
from node.transport.demux import DEFAULT_RECEIVE_BUDGET, EndpointCore
from node.transport.errors import ConnectionClosed, PeerKeyChanged, StreamReset, TransportError
from node.transport.events import (
    ConnectionTerminated,
    DatagramReceived,
    HandshakeCompleted,
    PathChanged,
    StreamDataReceived,
    StreamOpened,
    StreamsAvailable,
)
from node.transport.events import StreamReset as StreamResetEvent

_log = log.get_logger(__name__)

STUN_MAGIC = b"\x21\x12\xa4\x42"
MAX_PROTOCOL_LEN = 64
WRITE_HIGH_WATER = 2 << 20
_READ_BATCH = 256
_RECV_SIZE = 65536
_MAX_QUEUED_DATAGRAMS = 256
_SO_TIMESTAMPNS = 35  # Linux <asm-generic/socket.h>; SCM_TIMESTAMPNS has the same value
_TIMESPEC = struct.Struct("qq")
_ANC_SIZE = 64

Handler = Callable[["Connection", "Stream"], Awaitable[None]]


def is_stun(data: bytes) -> bool:
    """STUN messages: top two bits of byte 0 zero and the magic cookie at bytes 4..8."""
    return len(data) >= 20 and data[0] & 0xC0 == 0 and data[4:8] == STUN_MAGIC


class Stream:
    """A reliable ordered byte stream; semantics of asyncio's StreamReader + StreamWriter."""

    def __init__(self, connection: Connection, stream_id: int, protocol: str) -> None:
        self.connection = connection
        self.stream_id = stream_id
        self.protocol = protocol
        self._eof = False
        self._exc: BaseException | None = None
        self._readable = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        self._write_closed = False
        self._buf = bytearray()

    def __repr__(self) -> str:
        return f"<Stream {self.stream_id} {self.protocol}>"

    @property
    def _core(self) -> ConnectionCore:
        return self.connection._core

    def _pull(self, n: int) -> bytes:
        """Take up to ``n`` bytes (all if negative) from the local buffer or the core."""
        if not self._buf and not self._eof:
            data, eof = self._core.read_stream(self.stream_id, n)
            if eof:
                self._eof = True
            if data:
                self.connection._endpoint._touch(self._core)
            return data
        if n < 0 or n >= len(self._buf):
            data = bytes(self._buf)
            self._buf.clear()
            return data
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    async def _wait_readable(self) -> None:
        while True:
            if self._buf or self._core.stream_readable(self.stream_id):
                return
            if self._eof:
                return
            if self._exc is not None:
                raise self._exc
            # the core may hold an EOF without data
            _, eof = self._core.read_stream(self.stream_id, 0)
            if eof:
                self._eof = True
                return
            self._readable.clear()
            await self._readable.wait()

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (``-1``: everything until EOF); ``b""`` at EOF."""
        if n == 0:
            return b""
        if n < 0:
            parts = bytearray()
            while True:
                await self._wait_readable()
                chunk = self._pull(-1)
                if not chunk and self._eof and not self._buf:
                    return bytes(parts)
                parts += chunk
        await self._wait_readable()
        return self._pull(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes; asyncio.IncompleteReadError when the stream ends first."""
        out = bytearray()
        while len(out) < n:
            await self._wait_readable()
            chunk = self._pull(n - len(out))
            if not chunk and self._eof:
                raise asyncio.IncompleteReadError(bytes(out), n)
            out += chunk
        return bytes(out)

    def at_eof(self) -> bool:
        return self._eof and not self._buf

    def write(self, data: bytes) -> None:
        if self._exc is not None:
            raise self._exc
        if self._write_closed:
            raise TransportError(f"stream {self.stream_id} is closed for writing")
        if not data:
            return
        self._core.send_stream(self.stream_id, bytes(data))
        if self._core.send_unsent(self.stream_id) > WRITE_HIGH_WATER:
            self._drained.clear()
            self.connection._endpoint._drain_waiters.add(self)
        self.connection._endpoint._touch(self._core)

    async def drain(self) -> None:
        """Wait until the bytes of this stream not yet sent fall below the high-water mark
        (sent, unacknowledged bytes are bounded by the peer's flow-control window)."""
        while not self._drained.is_set():
            if self._exc is not None:
                raise self._exc
            await self._drained.wait()
        if self._exc is not None:
            raise self._exc

    def write_eof(self) -> None:
        if self._write_closed or self._exc is not None:
            return
        self._write_closed = True
        self._core.send_stream(self.stream_id, b"", fin=True)
        self.connection._endpoint._touch(self._core)

    def close(self) -> None:
        """Finish the writing side and stop reading; the core forgets the stream when both
        halves are done, which returns its credit to the peer."""
        core = self._core
        if core.state == State.ESTABLISHED:
            if not self._write_closed:
                self._write_closed = True
                with contextlib.suppress(TransportError):  # the peer may have stopped it
                    core.send_stream(self.stream_id, b"", fin=True)
            core.stop_stream(self.stream_id)
            self.connection._endpoint._touch(core)
        self._eof = True
        self.connection._streams.pop(self.stream_id, None)

    def reset(self, error_code: int = NO_ERROR) -> None:
        """Abort both directions."""
        self._core.reset_stream(self.stream_id, error_code)
        self._core.stop_stream(self.stream_id, error_code)
        self._write_closed = True
        self._eof = True
        self.connection._streams.pop(self.stream_id, None)
        self.connection._endpoint._touch(self._core)

    def _fail(self, exc: BaseException) -> None:
        if self._exc is None:
            self._exc = exc
        self._readable.set()
        self._drained.set()


class Connection:
    """An authenticated session with one peer."""

    def __init__(self, endpoint: Endpoint, core: ConnectionCore) -> None:
        self._endpoint = endpoint
        self._core = core
        self._streams: dict[int, Stream] = {}
        loop = asyncio.get_running_loop()
        self._established: asyncio.Future[None] = loop.create_future()
        self._closed = asyncio.Event()
        self._streams_available = asyncio.Event()
        self._datagrams: deque[bytes] = deque(maxlen=_MAX_QUEUED_DATAGRAMS)
        self._datagram_ready = asyncio.Event()
        self.close_reason: str | None = None
        self.datagram_handler: Callable[[bytes], None] | None = None

    def __repr__(self) -> str:
        pid = self.peer_id.hex()[:12] if self._core.peer_public_key else "?"
        return f"<Connection {pid} {self.remote_address}>"

    @property
    def peer_public_key(self) -> bytes:
        key = self._core.peer_public_key
        if key is None:
            raise TransportError("connection has no authenticated peer yet")
        return key

    @property
    def peer_id(self) -> bytes:
        pid = self._core.peer_id
        if pid is None:
            raise TransportError("connection has no authenticated peer yet")
        return pid

    @property
    def remote_address(self) -> Address:
        return self._core.remote_address

    @property
    def is_closed(self) -> bool:
        return self._closed.is_set()

    @property
    def rtt(self) -> float | None:
        return self._core.smoothed_rtt

    @property
    def silence(self) -> tuple[float, float]:
        """Seconds since the last packet from the peer, and the idle timeout of the session."""
        core = self._core
        return self._endpoint._now() - core._last_received, core.idle_timeout

    def status(self) -> dict[str, Any]:
        return self._core.status()

    async def open_stream(self, protocol: str) -> Stream:
        """Open a stream to the peer's handler for ``protocol`` (e.g. ``storage/1``)."""
        name = protocol.encode()
        if not 0 < len(name) <= MAX_PROTOCOL_LEN:
            raise ValueError(f"protocol name must be 1-{MAX_PROTOCOL_LEN} bytes: {protocol!r}")
        while True:
            if self._closed.is_set():
                raise ConnectionClosed(f"connection to {self.remote_address} is closed")
            if self._core.can_open_stream():
                break
            self._streams_available.clear()
            await asyncio.wait(
                [
                    asyncio.ensure_future(self._streams_available.wait()),
                    asyncio.ensure_future(self._closed.wait()),
                ],
                return_when=asyncio.FIRST_COMPLETED,
            )
        sid = self._core.open_stream()
        stream = Stream(self, sid, protocol)
        self._streams[sid] = stream
        stream.write(bytes((len(name),)) + name)
        return stream

    def send_datagram(self, data: bytes) -> None:
        """Send an unreliable datagram (dropped when too large for one packet: raises)."""
        if self._closed.is_set():
            raise ConnectionClosed(f"connection to {self.remote_address} is closed")
        self._core.send_datagram(data)
        self._endpoint._touch(self._core)

    async def receive_datagram(self) -> bytes:
        """The next datagram from the peer (when no ``datagram_handler`` is set)."""
        while not self._datagrams:
            if self._closed.is_set():
                raise ConnectionClosed(f"connection to {self.remote_address} is closed")
            self._datagram_ready.clear()
            await asyncio.wait(
                [
                    asyncio.ensure_future(self._datagram_ready.wait()),
                    asyncio.ensure_future(self._closed.wait()),
                ],
                return_when=asyncio.FIRST_COMPLETED,
            )
        return self._datagrams.popleft()

    def migrate(self, addr: Address) -> None:
        """Send this connection's packets to ``addr`` from now on (relay or new path)."""
        self._core.change_address(addr)
        self._endpoint._touch(self._core)

    async def close(self, reason: str = "") -> None:
        if self._closed.is_set():
            return
        self._core.close(APPLICATION_CLOSED, reason, now=self._endpoint._now())
        self._endpoint._touch(self._core)
        self._endpoint._flush()

    async def wait_closed(self) -> None:
        await self._closed.wait()

    def _on_terminated(self, ev: ConnectionTerminated) -> None:
        who = "peer" if ev.by_peer else "local side"
        self.close_reason = ev.reason or f"closed by {who}"
        exc = ConnectionClosed(
            f"connection to {self.remote_address} closed by {who}: {self.close_reason}"
        )
        if not self._established.done():
            self._established.set_exception(exc)
            self._established.exception()  # mark retrieved
        for stream in list(self._streams.values()):
            stream._fail(exc)
        self._closed.set()
        self._datagram_ready.set()


class Endpoint:
    """The node's UDP endpoint: outgoing connections, handlers for incoming streams."""

    def __init__(
        self,
        identity: Identity,
        *,
        config: TransportConfig | None = None,
        max_sessions: int = 1024,
        retry_threshold: int = 64,
        receive_budget: int = DEFAULT_RECEIVE_BUDGET,
    ) -> None:
        self.identity = identity
        self.core = EndpointCore(
            static_private=bytes(identity.x25519_private),
            public_key=identity.public_key,
            config=config,
            max_sessions=max_sessions,
            retry_threshold=retry_threshold,
            receive_budget=receive_budget,
        )
        self.stun_handler: Callable[[bytes, Address], None] | None = None
        self.connection_handler: Callable[[Connection], None] | None = None
        self._handlers: dict[str, Handler] = {}
        self._conns: dict[bytes, Connection] = {}
        self._drain_waiters: set[Stream] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_scheduled = False
        self._transmit: Transmit | None = None
        self._timestamps = False
        self.local_address: Address = ("0.0.0.0", 0)
        self.counters: dict[str, int] = {
            "stun_in": 0,
            "bytes_out": 0,
            "send_errors": 0,
            "handler_errors": 0,
            "streams_refused": 0,
        }

    # ------------------------------------------------------------------ lifecycle

    async def bind(
        self, host: str = "0.0.0.0", port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        """Open the UDP socket (raises OSError when the address is taken).

        With ``sock``, use that datagram socket instead (bound here if it is not yet), e.g.
        one created inside a network namespace.
        """
        self._loop = asyncio.get_running_loop()
        self._transmit = Transmit(self._sendto, self._loop.time)
        if sock is None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
            if sock.getsockname()[1] == 0:
                sock.bind((host, port))
            try:
                # receive timestamps keep event-loop latency out of RTT samples
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
                self._timestamps = True
            except OSError:
                self._timestamps = False
        except OSError:
            sock.close()
            raise
        self._sock = sock
        name = sock.getsockname()
        self.local_address = (name[0], name[1])
        self._loop.add_reader(sock.fileno(), self._read_ready)

    async def close(self) -> None:
        """Close every connection (telling peers) and the socket."""
        if self._sock is None:
            return
        now = self._now()
        for conn in list(self._conns.values()):
            conn._core.close(APPLICATION_CLOSED, "endpoint closing", now=now)
            self.core.touch(conn._core)
        self._flush()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=1.0)
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()
        self._sock = None

    # ------------------------------------------------------------------ API

    @property
    def connections(self) -> Iterator[Connection]:
        return iter([c for c in self._conns.values() if c._core.state == State.ESTABLISHED])

    def set_handler(self, protocol: str, handler: Handler) -> None:
        """Serve incoming streams whose protocol is ``protocol``."""
        self._handlers[protocol] = handler

    async def connect(
        self,
        addr: Address,
        *,
        peer_public_key: bytes | None = None,
        timeout: float = 10.0,
        accept_key_change: bool = False,
    ) -> Connection:
        """Handshake with ``addr`` (Noise XX, or IK when the peer's key is known).

        When the peer no longer holds ``peer_public_key`` the handshake falls back to XX and
        learns its current key: :class:`PeerKeyChanged` carries it, or, with
        ``accept_key_change``, the connection is made (``peer_public_key`` tells which key).
        """
        if self._sock is None:
            raise TransportError("endpoint is not bound; call bind() first")
        core = self.core.connect(
            addr,
            self._now(),
            peer_public_key=peer_public_key,
            accept_key_change=accept_key_change,
        )
        conn = Connection(self, core)
        self._conns[core.local_cid] = conn
        self._flush()
        try:
            await asyncio.wait_for(asyncio.shield(conn._established), timeout)
        except TimeoutError:
            core.close(NO_ERROR, "handshake timed out", now=self._now())
            self._touch(core)
            self._conns.pop(core.local_cid, None)
            raise TransportError(
                f"no handshake with {addr[0]}:{addr[1]} within {timeout:g} s "
                "(peer down, wrong address, or UDP blocked)"
            ) from None
        except ConnectionClosed as exc:
            self._conns.pop(core.local_cid, None)
            message = f"handshake with {addr[0]}:{addr[1]} failed: {exc}"
            if core.changed_peer_key is not None:
                raise PeerKeyChanged(message, core.changed_peer_key) from None
            raise TransportError(message) from None
        return conn

    def send_raw(self, data: bytes, addr: Address) -> None:
        """Send a datagram outside any connection (STUN, hole-punch probes)."""
        self._sendto(data, addr)

    def feed(self, data: bytes, addr: Address) -> None:
        """Process a datagram that arrived some other way (e.g. through a relay)."""
        self._on_datagram(data, addr)
        self._schedule_flush()

    # ------------------------------------------------------------------ I/O

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _sendto(self, data: bytes, addr: Address) -> None:
        if self._sock is None:
            return
        try:
            self._sock.sendto(data, addr)
            self.counters["bytes_out"] += len(data)
        except (BlockingIOError, InterruptedError):
            self.counters["send_errors"] += 1
        except OSError as exc:
            self.counters["send_errors"] += 1
            _log.debug("udp_send_failed", address=f"{addr[0]}:{addr[1]}", error=str(exc))

    def _read_ready(self) -> None:
        sock = self._sock
        if sock is None or self._loop is None:
            return
        clock = self._loop.time
        # kernel receive timestamps are CLOCK_REALTIME; map them onto the loop's clock
        offset = time.time() - clock()
        stamped = self._timestamps
        for _ in range(_READ_BATCH):
            try:
                if stamped:
                    data, anc, _flags, addr = sock.recvmsg(_RECV_SIZE, _ANC_SIZE)
                else:
                    data, addr = sock.recvfrom(_RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                # ICMP errors surface here on Linux; nothing to do for a datagram socket
                _log.debug("udp_recv_error", error=str(exc))
                continue
            # each datagram gets its own arrival time: a long batch must not date the
            # late ones back to its start (that would shorten their RTT samples)
            at = clock()
            if stamped and anc:
                level, kind, raw = anc[0]
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(raw) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(raw)
                    at = min(at, sec + nsec * 1e-9 - offset)
            self._on_datagram(data, (addr[0], addr[1]), at)
        self._flush()

    def _on_datagram(self, data: bytes, addr: Address, at: float | None = None) -> None:
        if is_stun(data):
            self.counters["stun_in"] += 1
            if self.stun_handler is not None:
                try:
                    self.stun_handler(data, addr)
                except Exception:
                    self.counters["handler_errors"] += 1
                    _log.exception("stun_handler_failed")
            return
        assert self._loop is not None
        self.core.receive(data, addr, self._loop.time() if at is None else at)

    def _touch(self, core: ConnectionCore) -> None:
        self.core.touch(core)
        self._schedule_flush()

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._loop is None:
            return
        now = self._loop.time()
        for data, addr in self.core.datagrams_to_send(now, self._transmit):
            self._sendto(data, addr)
        for core, ev in self.core.events():
            self._dispatch(core, ev)
        if self._drain_waiters:
            for stream in list(self._drain_waiters):
                if stream._core.send_unsent(stream.stream_id) <= WRITE_HIGH_WATER:
                    stream._drained.set()
                    self._drain_waiters.discard(stream)
        self._arm_timer()

    def _arm_timer(self) -> None:
        assert self._loop is not None
        t = self.core.get_timer()
        if t == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = t
        if t is not None:
            self._timer = self._loop.call_at(t, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        assert self._loop is not None
        self.core.handle_timer(self._loop.time())
        self._flush()

    # ------------------------------------------------------------------ events

    def _dispatch(self, core: ConnectionCore, ev: object) -> None:
        conn = self._conns.get(core.local_cid)
        if isinstance(ev, HandshakeCompleted):
            if conn is None:
                conn = self._conns[core.local_cid] = Connection(self, core)
                _log.debug(
                    "session_accepted",
                    peer=conn.peer_id.hex()[:16],
                    address=f"{core.remote_address[0]}:{core.remote_address[1]}",
                )
                if self.connection_handler is not None:
                    self.connection_handler(conn)
            if not conn._established.done():
                conn._established.set_result(None)
            return
        if conn is None:
            return
        if isinstance(ev, StreamDataReceived):
            stream = conn._streams.get(ev.stream_id)
            if stream is not None:
                stream._readable.set()
        elif isinstance(ev, StreamOpened):
            stream = Stream(conn, ev.stream_id, "")
            conn._streams[ev.stream_id] = stream
            self._spawn(self._serve(conn, stream))
        elif isinstance(ev, StreamResetEvent):
            stream = conn._streams.get(ev.stream_id)
            if stream is not None:
                stream._fail(StreamReset(f"peer reset stream {ev.stream_id} ({ev.error_code})"))
        elif isinstance(ev, DatagramReceived):
            if conn.datagram_handler is not None:
                try:
                    conn.datagram_handler(ev.data)
                except Exception:
                    self.counters["handler_errors"] += 1
                    _log.exception("datagram_handler_failed")
            else:
                conn._datagrams.append(ev.data)
                conn._datagram_ready.set()
        elif isinstance(ev, StreamsAvailable):
            conn._streams_available.set()
        elif isinstance(ev, PathChanged):
            _log.info("peer_migrated", address=f"{ev.address[0]}:{ev.address[1]}")
        elif isinstance(ev, ConnectionTerminated):
            conn._on_terminated(ev)
            self._conns.pop(core.local_cid, None)
            for stream in list(self._drain_waiters):
                if stream.connection is conn:
                    self._drain_waiters.discard(stream)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: Connection, stream: Stream) -> None:
        try:
            n = (await stream.readexactly(1))[0]
            if not 0 < n <= MAX_PROTOCOL_LEN:
                raise ValueError("bad protocol name length")
            stream.protocol = (await stream.readexactly(n)).decode()
        except (asyncio.IncompleteReadError, ValueError, UnicodeDecodeError, TransportError):
            self.counters["streams_refused"] += 1
            stream.reset(STREAM_REFUSED)
            return
        handler = self._handlers.get(stream.protocol)
        if handler is None:
            self.counters["streams_refused"] += 1
            _log.info("stream_refused", protocol=stream.protocol[:MAX_PROTOCOL_LEN])
            stream.reset(STREAM_REFUSED)
            return
        try:
            await handler(conn, stream)
        except (ConnectionClosed, StreamReset):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            self.counters["handler_errors"] += 1
            _log.exception("stream_handler_failed", protocol=stream.protocol)
        finally:
            stream.close()

    def status(self) -> dict[str, Any]:
        return {**self.core.status(), **self.counters}


async def open_endpoint(
    identity: Identity,
    host: str = "0.0.0.0",
    port: int = 0,
    *,
    sock: socket.socket | None = None,
    **kwargs: Any,
) -> Endpoint:
    """Create an :class:`Endpoint` bound to ``host:port`` (or on the given socket)."""
    ep = Endpoint(identity, **kwargs)
    await ep.bind(host, port, sock=sock)
    return ep
