"""Relays in the lab: a relay that dies is replaced; limits cut or refuse relayed traffic."""

from __future__ import annotations

import asyncio

import pytest

from lab import Lab
from node.transport.endpoint import Connection, Stream
from node.transport.nat.errors import NatError
from node.transport.nat.relay import RelayLimits
from tests.lab.conftest import require_lab
from tests.nat.matrix import Matrix, Peer, exchange


async def _relayed_pair(matrix: Matrix) -> tuple[Peer, Peer, Connection]:
    # symmetric against symmetric: no direct path, so the session stays relayed
    a = await matrix.peer("symmetric", 0)
    b = await matrix.peer("symmetric", 1)
    conn = await a.traversal.connect(
        b.endpoint.identity.public_key, b.addresses, b.nat_class, a.relay_conns, upgrade=False
    )
    assert a.traversal.path_of(conn) == "relayed"
    assert await exchange(conn, b"one") == b"re:one"
    return a, b, conn


@pytest.mark.slow
async def test_relay_that_dies_is_replaced() -> None:
    require_lab()
    with Lab() as lab:
        matrix = Matrix(lab)
        await matrix.start_relay()
        await matrix.start_relay()
        try:
            a, b, conn = await _relayed_pair(matrix)
            first_path = conn.remote_address
            await matrix.stop_relay(0)
            # the session moves to the second relay and carries data both ways
            for _ in range(600):
                if a.traversal.counters["relay_replaced"]:
                    break
                await asyncio.sleep(0.1)
            assert a.traversal.counters["relay_replaced"] == 1
            assert conn.remote_address != first_path
            assert a.traversal.path_of(conn) == "relayed"
            assert await exchange(conn, b"two") == b"re:two"
            b_conn = next(
                c for c in b.endpoint.connections if c.peer_id == a.endpoint.identity.node_id
            )
            assert await exchange(b_conn, b"three") == b"re:three"
            _, _, second = matrix.relays[1]
            assert second.counters["relayed_bytes"] > 0
            await a.close()
            await b.close()
        finally:
            await matrix.stop_relay()


@pytest.mark.slow
async def test_relay_limits() -> None:
    require_lab()
    with Lab() as lab:
        matrix = Matrix(lab)
        await matrix.start_relay(RelayLimits(max_connections=1, max_bytes=20_000, max_seconds=60))
        try:
            a, b, conn = await _relayed_pair(matrix)
            _, _, server = matrix.relays[0]
            assert server.active == 1
            # a second relayed connection is refused: the relay is full
            c = await matrix.peer("symmetric", 0)
            with pytest.raises(NatError, match="relay full"):
                await c.traversal.connect(
                    b.endpoint.identity.public_key, b.addresses, b.nat_class, c.relay_conns
                )
            # past the byte limit the relay cuts the connection

            async def sink(_: Connection, incoming: Stream) -> None:
                while await incoming.read(65536):
                    pass

            b.endpoint.set_handler("sink", sink)
            stream = await conn.open_stream("sink")
            stream.write(b"x" * 50_000)
            stream.write_eof()
            for _ in range(600):
                if server.counters["cut_bytes"] and server.active == 0:
                    break
                await asyncio.sleep(0.1)
            assert server.counters["cut_bytes"] == 1
            assert server.active == 0
            for peer in (a, b, c):
                await peer.close()
        finally:
            await matrix.stop_relay()
