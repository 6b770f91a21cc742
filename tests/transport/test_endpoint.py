"""The asyncio API over real UDP sockets on loopback."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from node.identity import Identity
from node.transport.endpoint import Connection, Endpoint, Stream, open_endpoint
from node.transport.errors import PeerKeyChanged, StreamReset, TransportError


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    a = await open_endpoint(Identity.generate(), "127.0.0.1", 0)
    b = await open_endpoint(Identity.generate(), "127.0.0.1", 0)
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def echo(conn: Connection, stream: Stream) -> None:
    data = await stream.read()
    stream.write(data[::-1])
    await stream.drain()
    stream.write_eof()


async def test_xx_connect_and_echo(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    b.set_handler("echo/1", echo)
    conn = await a.connect(b.local_address)
    assert conn.peer_public_key == b.identity.public_key
    assert conn.peer_id == b.identity.node_id
    assert conn.remote_address == b.local_address
    stream = await conn.open_stream("echo/1")
    stream.write(b"hello")
    stream.write_eof()
    assert await stream.read() == b"olleh"
    accepted = list(b.connections)
    assert len(accepted) == 1
    assert accepted[0].peer_public_key == a.identity.public_key


async def test_ik_connect_with_known_key(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    b.set_handler("echo/1", echo)
    conn = await a.connect(b.local_address, peer_public_key=b.identity.public_key)
    stream = await conn.open_stream("echo/1")
    stream.write(b"abc")
    stream.write_eof()
    assert await stream.readexactly(3) == b"cba"
    with pytest.raises(asyncio.IncompleteReadError):
        await stream.readexactly(1)


async def test_ik_with_wrong_key_fails_and_learns_the_key(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    with pytest.raises(PeerKeyChanged) as info:
        await a.connect(b.local_address, peer_public_key=Identity.generate().public_key, timeout=5)
    assert info.value.public_key == b.identity.public_key
    # the caller may accept the key it learned (e.g. after checking a signed record)
    conn = await a.connect(
        b.local_address, peer_public_key=Identity.generate().public_key, accept_key_change=True
    )
    assert conn.peer_public_key == b.identity.public_key


async def test_streams_both_directions_and_many(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    a.set_handler("echo/1", echo)
    b.set_handler("echo/1", echo)
    conn_ab = await a.connect(b.local_address)
    conn_ba = next(iter(b.connections))
    blobs = [os.urandom(1000 + 997 * i) for i in range(40)]

    async def one(conn: Connection, blob: bytes) -> bytes:
        s = await conn.open_stream("echo/1")
        s.write(blob)
        s.write_eof()
        return await s.read()

    results = await asyncio.gather(
        *(one(conn_ab, x) for x in blobs[:20]), *(one(conn_ba, x) for x in blobs[20:])
    )
    assert results == [x[::-1] for x in blobs]


async def request_answer(conn: Connection, stream: Stream) -> None:
    """Answers length-prefixed messages on one stream until the caller closes it."""
    while True:
        try:
            n = (await stream.readexactly(1))[0]
        except asyncio.IncompleteReadError:
            return
        stream.write(bytes((n,)) + (await stream.readexactly(n))[::-1])


@pytest.mark.parametrize("ending", ["close", "eof", "reset"])
async def test_streams_past_the_credit_are_released(
    pair: tuple[Endpoint, Endpoint], ending: str
) -> None:
    a, b = pair
    b.set_handler("rr/1", request_answer)
    conn = await a.connect(b.local_address)
    # three times the 128-stream credit, one after another, each ended as callers do
    for i in range(3 * 128):
        stream = await asyncio.wait_for(conn.open_stream("rr/1"), 5)
        stream.write(b"\x03" + i.to_bytes(3, "big"))
        assert await stream.readexactly(4) == b"\x03" + i.to_bytes(3, "big")[::-1]
        if ending == "close":
            stream.close()  # what a caller does after its answer: FIN, stop reading
        elif ending == "eof":
            stream.write_eof()
            assert await stream.read() == b""
        else:
            stream.reset()
    await asyncio.sleep(0.1)
    peer = next(iter(b.connections))
    assert conn.status()["streams"] == 0 and peer.status()["streams"] == 0


async def test_bulk_stream_with_drain(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    received: list[int] = []

    async def sink(conn: Connection, stream: Stream) -> None:
        n = 0
        while chunk := await stream.read(65536):
            n += len(chunk)
        received.append(n)
        stream.write(str(n).encode())
        stream.write_eof()

    b.set_handler("sink/1", sink)
    conn = await a.connect(b.local_address)
    s = await conn.open_stream("sink/1")
    blob = os.urandom(1 << 19)
    for _ in range(4):
        s.write(blob)
        await s.drain()
    s.write_eof()
    assert await s.read() == b"2097152"
    assert received == [2 << 20]


async def test_datagrams(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    conn = await a.connect(b.local_address)
    peer = next(iter(b.connections))
    for i in range(5):
        conn.send_datagram(b"dgram %d" % i)
    got = {await asyncio.wait_for(peer.receive_datagram(), 5) for _ in range(5)}
    assert got == {b"dgram %d" % i for i in range(5)}
    with pytest.raises(TransportError):
        conn.send_datagram(bytes(2000))


async def test_unknown_protocol_is_reset(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    conn = await a.connect(b.local_address)
    s = await conn.open_stream("nobody/1")
    s.write(b"x")
    with pytest.raises(StreamReset):
        await asyncio.wait_for(s.read(), 5)
    assert b.counters["streams_refused"] == 1


async def test_stun_datagrams_go_to_the_stun_handler(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    got: list[tuple[bytes, tuple[str, int]]] = []
    done = asyncio.Event()

    def on_stun(data: bytes, addr: tuple[str, int]) -> None:
        got.append((data, addr))
        done.set()

    b.stun_handler = on_stun
    binding = b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)
    a.send_raw(binding, b.local_address)
    await asyncio.wait_for(done.wait(), 5)
    assert got == [(binding, a.local_address)]


async def test_close_is_seen_by_peer(pair: tuple[Endpoint, Endpoint]) -> None:
    a, b = pair
    conn = await a.connect(b.local_address)
    peer = next(iter(b.connections))
    await conn.close("bye")
    await asyncio.wait_for(peer.wait_closed(), 5)
    assert peer.close_reason == "bye"
    assert list(b.connections) == []


async def test_connecting_to_itself_is_refused(pair: tuple[Endpoint, Endpoint]) -> None:
    a, _ = pair
    with pytest.raises(TransportError, match="itself"):
        await a.connect(a.local_address, timeout=3)
    assert a.core.counters["refused_self"] == 2  # both ends of the loop refuse
    assert list(a.connections) == []
