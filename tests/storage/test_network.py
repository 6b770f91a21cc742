"""storage/1 over real streams: asyncio TCP, and the transport's Endpoint under load."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from node import state
from node.identity import Identity
from node.storage_agent import audit, index, merkle, wire
from node.storage_agent.contracts import Contract
from node.storage_agent.ledger import Ledger
from node.storage_agent.network import EndpointDialer, TcpDialer, TcpServer, serve_stream
from node.storage_agent.provider import Capacity, Provider
from node.storage_agent.store import ChunkStore, chunk_id
from node.transport.endpoint import Endpoint

NODE = Identity.from_seed(b"N" * 32)
CLIENT = Identity.from_seed(b"C" * 32)


def provider(tmp_path: Path) -> Provider:
    store = ChunkStore(tmp_path / "disk", NODE.node_id_text)
    store.initialise(expect_existing=False)
    db = state.open_state(tmp_path / "state.db")
    index.setup(db)
    return Provider(NODE, store, db, Ledger(db, NODE.node_id, store.vouchers), Capacity(0))


def info() -> wire.Info:
    return wire.Info(NODE.public_key, 1 << 30, True)


def offer(data: bytes) -> Contract:
    now = int(time.time())
    return Contract(chunk_id(data), merkle.root(data), len(data), 1, now, now + 3600,
                    CLIENT.public_key, NODE.public_key).signed_by_client(CLIENT)  # fmt: skip


async def test_store_prove_fetch_over_tcp(tmp_path: Path) -> None:
    prov = provider(tmp_path)
    server = TcpServer(prov, info, "127.0.0.1", 0)
    addr = await server.start()
    try:
        dialer = TcpDialer()
        data = os.urandom(100_000)
        stored = await dialer.request(addr, wire.Store(offer(data), data))
        assert isinstance(stored, wire.Stored)
        stored.contract.check()
        auditor = audit.Auditor()
        ch = auditor.challenge(stored.contract, os.urandom(32), time.time())
        proof = await dialer.request(addr, wire.ChallengeMsg(ch))
        assert isinstance(proof, wire.Proof)
        assert auditor.receive(proof.response, time.time()).outcome is audit.Outcome.SUCCESS
        got = await dialer.request(addr, wire.Fetch(chunk_id(data)))
        assert got == wire.Chunk(data)
        missing = await dialer.request(addr, wire.Fetch(chunk_id(b"nope")))
        assert isinstance(missing, wire.Error) and missing.code is wire.ErrorCode.MISSING
        bad = await dialer.request(addr, wire.Store(offer(data), data + b"x"))
        assert isinstance(bad, wire.Error) and bad.code is wire.ErrorCode.BAD_REQUEST
    finally:
        await server.close()


async def test_endpoint_dialer_survives_many_concurrent_requests(tmp_path: Path) -> None:
    prov = provider(tmp_path)
    a, b = Endpoint(CLIENT), Endpoint(NODE)
    await a.bind("127.0.0.1", 0)
    await b.bind("127.0.0.1", 0)

    async def handler(conn: object, stream: wire.Stream) -> None:
        await serve_stream(prov, stream, None, info)

    b.set_handler(wire.PROTOCOL, handler)
    dialer = EndpointDialer(a)
    try:
        # Far more exchanges, more of them at once, than one connection has stream credit for
        # at a time: closed streams return their credit, so the first connection serves them all.
        first = None
        for _ in range(40):
            answers = await asyncio.gather(
                *(dialer.request(b.local_address, wire.Hello(), timeout=10) for _ in range(16))
            )
            assert all(isinstance(x, wire.Info) for x in answers)
            (conn,) = a.connections
            first = first or conn
            assert conn is first
        # The server side saw far more than 128 streams opened on that one connection.
        (served,) = b.connections
        assert served._core._peer_streams_opened > 128
    finally:
        await a.close()
        await b.close()
