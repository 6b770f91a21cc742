"""Binding lifetime measurement and keepalives against a lab router with a short timeout."""

from __future__ import annotations

import asyncio

import pytest

from lab import Lab
from node.transport.nat import stun
from node.transport.nat.aio import StunAgent, open_stun_socket
from node.transport.nat.keepalive import Keepalive, interval_for, measure_binding_lifetime
from tests.lab.conftest import require_lab
from tests.nat.matrix import Matrix, exchange

TIMEOUT = 6  # conntrack UDP timeout set in the router


def test_indication_is_not_answered_and_interval_bounds() -> None:
    from node.transport.nat.keepalive import binding_indication
    from node.transport.nat.stun_server import StunServer

    data = binding_indication()
    assert len(data) == 20 and stun.decode(data).cls == stun.Class.INDICATION
    assert StunServer().handle(data, ("192.0.2.1", 1), ("192.0.2.2", 2), now=0.0) is None
    assert interval_for(None) == 15.0
    assert interval_for(6.0) == 3.0
    assert interval_for(1.0) == 2.0
    assert interval_for(600.0) == 60.0


def conntrack_has(router_ns: object, port: int) -> bool:
    out = router_ns.run(["conntrack", "-L", "-p", "udp"])  # type: ignore[attr-defined]
    return f"sport={port} " in out


@pytest.mark.slow
async def test_binding_measured_and_held_open_by_keepalives() -> None:
    require_lab()
    with Lab() as lab:
        matrix = Matrix(lab, udp_timeout=TIMEOUT)
        await matrix.start_relay()
        try:
            a = await matrix.peer("port-restricted-cone", 0)
            b = await matrix.peer("public", 0)
            ns, router = matrix.place("port-restricted-cone", 0)
            assert router is not None
            # the node's own STUN agent is the primary; a second socket is the probe
            primary = a.endpoint.stun_handler.__self__  # type: ignore[union-attr]
            assert isinstance(primary, StunAgent)
            probe_sock = ns.socket()
            probe_sock.bind(("0.0.0.0", 0))
            probe = await open_stun_socket(sock=probe_sock)
            try:
                lifetime = await measure_binding_lifetime(
                    primary, probe.agent, matrix.relay_address, low=2.0, high=10.0, precision=2.0
                )
            finally:
                probe.close()
            assert 2.0 <= lifetime <= TIMEOUT
            conn = await a.traversal.connect(
                b.endpoint.identity.public_key, b.addresses, b.nat_class, a.relay_conns
            )
            assert await exchange(conn, b"hi") == b"re:hi"
            keepalive = Keepalive(
                a.endpoint.send_raw, lambda: [conn.remote_address], interval_for(lifetime)
            )
            task = asyncio.create_task(keepalive.run())
            try:
                await asyncio.sleep(3 * TIMEOUT)  # idle, but shorter than the 20 s transport ping
            finally:
                task.cancel()
            assert keepalive.sent >= 3
            assert conntrack_has(router.ns, a.endpoint.local_address[1])
            b_conn = next(
                c for c in b.endpoint.connections if c.peer_id == a.endpoint.identity.node_id
            )
            assert await exchange(b_conn, b"inbound") == b"re:inbound"
            await a.close()
            await b.close()
        finally:
            await matrix.stop_relay()
