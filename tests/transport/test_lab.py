"""Real UDP sockets in network namespaces: an emulated lossy link and a NAT that rebinds."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from node.identity import Identity
from node.transport.endpoint import Connection, Endpoint, Stream, open_endpoint
from tests.support import require_binary

PORT = 7700


async def echo(conn: Connection, stream: Stream) -> None:
    stream.write(await stream.read())
    await stream.drain()
    stream.write_eof()


async def _exchange(conn: Connection, blob: bytes) -> bytes:
    s = await conn.open_stream("echo/1")
    s.write(blob)
    s.write_eof()
    return await asyncio.wait_for(s.read(), 60)


async def _pair(server_ns: Any, client_ns: Any) -> tuple[Endpoint, Endpoint]:
    ssock = server_ns.socket()
    ssock.bind(("0.0.0.0", PORT))
    server = await open_endpoint(Identity.generate(), sock=ssock)
    server.set_handler("echo/1", echo)
    client = await open_endpoint(Identity.generate(), sock=client_ns.socket())
    return server, client


def test_streams_and_datagrams_over_an_emulated_lossy_link(lab: Any) -> None:
    from lab import LinkSpec

    spec = LinkSpec(
        rate_mbit=20, delay_ms=10, loss=0.02, duplicate=0.02, reorder=0.03, queue_bytes=100_000
    )
    srv = lab.public_host("srv", emulate=spec)
    cli = lab.public_host("cli")
    server_addr = (srv.addresses[0], PORT)

    async def run() -> None:
        server, client = await _pair(srv, cli)
        try:
            conn = await client.connect(server_addr, timeout=20)
            blobs = [os.urandom(n) for n in (10, 70_000, 600_000)]
            results = await asyncio.gather(*(_exchange(conn, b) for b in blobs))
            assert results == blobs
            peer = next(iter(server.connections))
            got: list[bytes] = []
            peer.datagram_handler = got.append
            for i in range(40):
                conn.send_datagram(b"d%02d" % i)
                await asyncio.sleep(0.005)
            await asyncio.sleep(0.5)
            # unreliable: most arrive, none twice, none altered
            assert 20 <= len(got) <= 40
            assert len(set(got)) == len(got) and all(g.startswith(b"d") for g in got)
            core = peer._core
            assert core.counters["replayed"] > 0  # the link duplicated packets
            assert conn._core.counters["lost"] > 0
        finally:
            await client.close()
            await server.close()

    asyncio.run(run())


def test_session_survives_nat_rebinding(lab: Any) -> None:
    require_binary("conntrack", "conntrack")
    router = lab.router("home", "symmetric")
    inside = router.host("h")
    srv = lab.public_host("srv")
    server_addr = (srv.addresses[0], PORT)

    async def run() -> None:
        server, client = await _pair(srv, inside)
        try:
            conn = await client.connect(server_addr, timeout=20)
            assert await _exchange(conn, b"before") == b"before"
            peer = next(iter(server.connections))
            before = peer.remote_address
            assert before[0] == router.wan_addr
            router.flush_conntrack()  # the router forgets the mapping; a new one gets a new port
            blob = os.urandom(200_000)
            assert await _exchange(conn, blob) == blob
            after = peer.remote_address
            assert after[0] == router.wan_addr and after != before
            assert peer.peer_public_key == client.identity.public_key
        finally:
            await client.close()
            await server.close()

    asyncio.run(run())
