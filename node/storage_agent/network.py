"""asyncio glue for storage/1: serve a :class:`Provider` on streams, and talk to peers.

Streams come from the transport's Endpoint (protocol ``storage/1``) when the transport service
offers one; otherwise from a TCP listener on the same port number as the UDP transport, which
has the same stream semantics. The protocol code sees only ``readexactly``/``write``/``drain``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from node import log
from node.storage_agent import wire
from node.storage_agent.errors import ProtocolError, StorageError
from node.storage_agent.provider import Provider

_log = log.get_logger(__name__)
REQUEST_TIMEOUT = 30.0
IDLE_TIMEOUT = 900.0
"""Seconds a serving stream may wait for the next request."""
STREAM_REUSE = 600.0
STREAM_POOL = 8


class PeerUnreachable(StorageError):
    """A peer could not be reached or did not answer in time."""


@dataclass(frozen=True, slots=True)
class Peer:
    address: tuple[str, int]
    public_key: bytes
    accepting: bool = True
    """Whether it takes new chunks now (a peer that does not still serves and proves)."""

    @property
    def label(self) -> str:
        return f"{self.address[0]}:{self.address[1]}"


async def serve_stream(
    provider: Provider,
    stream: wire.Stream,
    peer_key: bytes | None,
    info: Callable[[], wire.Info],
) -> None:
    """Answer requests on one stream until it ends or misbehaves."""
    while True:
        try:
            msg = await asyncio.wait_for(wire.read_message(stream), IDLE_TIMEOUT)
        except (ProtocolError, TimeoutError) as exc:
            _log.info("storage_peer_dropped", reason=str(exc) or "idle")
            with contextlib.suppress(Exception):
                await wire.write_message(
                    stream, wire.Error(wire.ErrorCode.BAD_REQUEST, str(exc) or "idle")
                )
            return
        except (ConnectionError, OSError):
            return
        if msg is None:
            return
        if isinstance(msg, wire.Hello):
            answer: wire.Message = info()
        else:
            answer = await asyncio.to_thread(provider.handle, msg, peer_key, time.time())
        try:
            await wire.write_message(stream, answer)
        except (ConnectionError, OSError):
            return


class TcpServer:
    """storage/1 over TCP (one request/answer exchange after another per connection)."""

    def __init__(
        self, provider: Provider, info: Callable[[], wire.Info], host: str, port: int
    ) -> None:
        self.provider, self.info, self.host, self.port = provider, info, host, port
        self._server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._client, self.host, self.port, reuse_address=True, limit=1 << 16
        )
        sock = self._server.sockets[0].getsockname()
        return sock[0], sock[1]

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await serve_stream(self.provider, wire.split_stream(reader, writer), None, self.info)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


class Dialer(Protocol):
    async def request(
        self, address: tuple[str, int], msg: wire.Message, *, peer_key: bytes | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> wire.Message: ...  # fmt: skip


class TcpDialer:
    """Opens a TCP connection per exchange (loopback devnets and LANs)."""

    async def request(
        self, address: tuple[str, int], msg: wire.Message, *, peer_key: bytes | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> wire.Message:  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(*address, limit=1 << 16)
                try:
                    stream = wire.split_stream(reader, writer)
                    await wire.write_message(stream, msg)
                    answer = await wire.read_message(stream)
                finally:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
        except TimeoutError:
            raise PeerUnreachable(f"{address[0]}:{address[1]} did not answer in time") from None
        except OSError as exc:
            raise PeerUnreachable(f"cannot reach {address[0]}:{address[1]}: {exc}") from None
        if answer is None:
            raise PeerUnreachable(f"{address[0]}:{address[1]} closed the stream without answer")
        return answer


class EndpointDialer:
    """Uses the transport's Endpoint: one encrypted connection per peer, streams reused.

    A stream carries one exchange after another, so a busy peer costs a few long-lived streams
    instead of a new stream per request. Idle streams older than :data:`STREAM_REUSE` are
    closed rather than reused (the serving side drops them after :data:`IDLE_TIMEOUT`).
    """

    def __init__(self, endpoint: Any) -> None:
        self.endpoint = endpoint
        self._conns: dict[tuple[str, int], Any] = {}
        self._idle: dict[tuple[str, int], list[tuple[float, Any]]] = {}
        self._locks: dict[tuple[str, int], asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def _connection(
        self, address: tuple[str, int], peer_key: bytes | None, timeout: float
    ) -> Any:
        # One handshake per peer at a time: concurrent requests share its connection.
        async with self._locks.setdefault(address, asyncio.Lock()):
            conn = self._conns.get(address)
            if conn is not None and getattr(conn, "is_closed", False):
                self._forget(address)
                conn = None
            if conn is None:
                conn = await self.endpoint.connect(
                    address, peer_public_key=peer_key, timeout=max(1.0, timeout * 0.8)
                )
                self._conns[address] = conn
            return conn

    def _forget(self, address: tuple[str, int]) -> None:
        """Stop using the connection to ``address`` (after an error) and close it."""
        conn = self._conns.pop(address, None)
        for _, stream in self._idle.pop(address, []):
            with contextlib.suppress(Exception):
                stream.close()
        if conn is None:
            return
        task = asyncio.get_running_loop().create_task(self._close(conn))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    @staticmethod
    async def _close(conn: Any) -> None:
        with contextlib.suppress(Exception):
            await conn.close()

    def _take_idle(self, address: tuple[str, int]) -> Any | None:
        pool = self._idle.get(address, [])
        now = time.monotonic()
        while pool:
            since, stream = pool.pop()
            if now - since < STREAM_REUSE:
                return stream
            with contextlib.suppress(Exception):
                stream.close()
        return None

    def _give_back(self, address: tuple[str, int], stream: Any) -> None:
        pool = self._idle.setdefault(address, [])
        if len(pool) < STREAM_POOL:
            pool.append((time.monotonic(), stream))
        else:
            with contextlib.suppress(Exception):
                stream.close()

    async def _exchange(self, stream: Any, msg: wire.Message) -> wire.Message | None:
        await wire.write_message(stream, msg)
        return await wire.read_message(stream)

    async def _request_on(
        self, conn: Any, address: tuple[str, int], msg: wire.Message, peer_key: bytes | None,
        timeout: float,
    ) -> wire.Message:  # fmt: skip
        answer = None
        stream = self._take_idle(address)
        if stream is not None:
            try:
                answer = await self._exchange(stream, msg)
            except (OSError, StorageError, ConnectionError):
                answer = None
            except Exception:
                # A reused stream the peer dropped: the transport's own error root.
                answer = None
            if answer is None:
                with contextlib.suppress(Exception):
                    stream.close()
        if answer is None:
            stream = await conn.open_stream(wire.PROTOCOL)
            try:
                answer = await self._exchange(stream, msg)
            except BaseException:
                with contextlib.suppress(Exception):
                    stream.close()
                raise
        if answer is None:
            if stream is not None:
                stream.close()
            raise PeerUnreachable(f"{address[0]}:{address[1]} closed the stream without answer")
        assert stream is not None
        if self._conns.get(address) is conn:
            self._give_back(address, stream)
        else:
            stream.close()
        return answer

    async def request(
        self, address: tuple[str, int], msg: wire.Message, *, peer_key: bytes | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> wire.Message:  # fmt: skip
        try:
            async with asyncio.timeout(timeout):
                conn = await self._connection(address, peer_key, timeout)
                return await self._request_on(conn, address, msg, peer_key, timeout)
        except TimeoutError:
            self._forget(address)
            raise PeerUnreachable(f"{address[0]}:{address[1]} did not answer in time") from None
        except PeerUnreachable:
            raise
        except ProtocolError as exc:
            self._forget(address)
            raise PeerUnreachable(f"{address[0]}:{address[1]} broke the protocol: {exc}") from None
        except Exception as exc:
            # OSError, or the transport's own errors: a failed peer is unreachable either way.
            self._forget(address)
            raise PeerUnreachable(f"cannot reach {address[0]}:{address[1]}: {exc}") from None
