"""Random and mutated datagrams thrown at a live endpoint: nothing raises, drops are counted."""

from __future__ import annotations

import asyncio
import random
import socket

from node.identity import Identity
from node.transport.endpoint import Connection, Stream, open_endpoint


async def test_fuzzed_datagrams_at_live_endpoint() -> None:
    rng = random.Random(1234)
    server = await open_endpoint(Identity.generate(), "127.0.0.1", 0)
    client = await open_endpoint(Identity.generate(), "127.0.0.1", 0)
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))

    async def echo(conn: Connection, stream: Stream) -> None:
        stream.write(await stream.read())
        stream.write_eof()

    server.set_handler("echo/1", echo)
    captured: list[bytes] = []
    real_sendto = client._sendto

    def capture(data: bytes, addr: tuple[str, int]) -> None:
        captured.append(data)
        real_sendto(data, addr)

    client._sendto = capture  # type: ignore[method-assign]
    try:
        conn = await client.connect(server.local_address)
        s = await conn.open_stream("echo/1")
        s.write(b"before")
        s.write_eof()
        assert await s.read() == b"before"
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        before = dict(server.core.counters)
        sent = 0
        for i in range(3000):
            kind = i % 4
            if kind == 0:
                data = rng.randbytes(rng.randrange(0, 1500))
            else:
                base = bytearray(rng.choice(captured))
                for _ in range(rng.randrange(1, 4)):
                    base[rng.randrange(len(base))] = rng.randrange(256)
                if kind == 2:
                    base = base[: rng.randrange(len(base) + 1)]
                if kind == 3:
                    base[0] = 0x80 | rng.randrange(16)
                data = bytes(base)
            # half from a stranger's socket, half replayed from the client's own address
            if i % 2:
                sock.sendto(data, server.local_address)
            else:
                client._sock.sendto(data, server.local_address)  # type: ignore[union-attr]
            sent += 1
            if i % 200 == 0:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        sock.close()
        counters = server.core.counters
        dropped = sum(
            counters[k] - before.get(k, 0)
            for k in (
                "not_ours",
                "malformed",
                "unknown_connection",
                "dropped_unauthenticated",
                "initial_too_small",
            )
        )
        assert counters["datagrams_in"] - before["datagrams_in"] >= sent
        assert dropped > sent // 2
        assert errors == []
        # the real session still works afterwards
        s = await conn.open_stream("echo/1")
        s.write(b"after")
        s.write_eof()
        assert await asyncio.wait_for(s.read(), 5) == b"after"
    finally:
        await client.close()
        await server.close()
