"""STUN interop with coturn both ways, over real UDP sockets on loopback."""

from __future__ import annotations

import asyncio
import re
import subprocess
from pathlib import Path

import pytest

from node.transport.nat import stun
from node.transport.nat.aio import open_stun_socket, serve_rfc5780
from node.transport.nat.errors import NatError
from node.transport.nat.stun_server import StunServer
from tests.nat.coturn import free_udp_port_pair, run_coturn
from tests.support import require_binary


async def test_our_client_learns_mapped_address_from_coturn(tmp_path: Path) -> None:
    with run_coturn(tmp_path, ("127.0.0.1", "127.0.0.2")) as coturn:
        sock = await open_stun_socket(("127.0.0.1", 0))
        try:
            result = await sock.binding(coturn.address)
            assert result.mapped == sock.local
            assert result.source == coturn.address
            # coturn with two addresses advertises its alternate (RFC 5780)
            assert result.other_address == ("127.0.0.2", coturn.port + 1)
            changed = await sock.binding(coturn.address, change=stun.CHANGE_IP | stun.CHANGE_PORT)
            assert changed.source == ("127.0.0.2", coturn.port + 1)
            assert changed.mapped == sock.local
        finally:
            sock.close()


def _stunclient(port: int, host: str = "127.0.0.1") -> str:
    binary = require_binary("turnutils_stunclient", "coturn")
    out = subprocess.run(
        [binary, "-p", str(port), "-L", "127.0.0.3", host],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return out.stdout + out.stderr


async def test_coturn_client_learns_mapped_address_from_our_server() -> None:
    port = free_udp_port_pair()
    server = await serve_rfc5780(("127.0.0.1", port), ("127.0.0.2", port + 1))
    try:
        text = await asyncio.to_thread(_stunclient, port)
    finally:
        server.close()
    reflexive = re.findall(r"UDP reflexive addr: (\d+\.\d+\.\d+\.\d+):(\d+)", text)
    assert reflexive, text
    assert {ip for ip, _ in reflexive} == {"127.0.0.3"}
    assert re.search(rf"Response origin: : 127\.0\.0\.2:{port + 1}", text), text
    assert re.search(rf"Other addr: : 127\.0\.0\.2:{port + 1}", text), text


async def test_our_client_and_server_over_sockets() -> None:
    server = await open_stun_socket(("127.0.0.1", 0), server=StunServer())
    client = await open_stun_socket(("127.0.0.1", 0))
    try:
        result = await client.binding(server.local)
        assert result.mapped == client.local
        assert result.response_origin == server.local
        with pytest.raises(NatError, match="420"):
            await client.binding(server.local, change=stun.CHANGE_PORT)
    finally:
        client.close()
        server.close()
