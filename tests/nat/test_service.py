"""The nat service on real transport endpoints: STUN on the node's port, discovery."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from node import config, state
from node.agent import AgentContext
from node.events import EventLog
from node.identity import Identity
from tests.nat.inproc import nat_of, start_nat
from tests.support import require_binary


async def _node(tmp: Path, name: str, stun_servers: list[str]) -> AgentContext:
    data = tmp / name
    data.mkdir()
    ctx = AgentContext(
        data, config.Config(), Identity.generate(), state.open_state(data / "state.db"),
        EventLog(),
    )  # fmt: skip
    return await start_nat(ctx, stun_servers)


async def test_discovery_through_two_nodes_stun_servers(tmp_path: Path) -> None:
    a = await _node(tmp_path, "a", [])
    b = await _node(tmp_path, "b", [])
    c = await _node(tmp_path, "c", [a.urls["listen"], b.urls["listen"]])
    try:
        report = await nat_of(c).check()
        assert report is not None
        assert report.nat_class.value == "public"
        assert report.public_address == ("127.0.0.1", int(c.urls["listen"].split(":")[1]))
        info = nat_of(c).nat_info()
        assert info["class"] == "public" and info["public_address"] == c.urls["listen"]
        served = nat_of(a).status()["stun_server"]
        assert served["answered"] >= 1
    finally:
        for ctx in (a, b, c):
            await ctx.services["transport"].endpoint.close()  # type: ignore[attr-defined]


async def test_standard_stun_client_learns_address_from_node_port(tmp_path: Path) -> None:
    binary = require_binary("turnutils_stunclient", "coturn")
    a = await _node(tmp_path, "a", [])
    port = a.urls["listen"].split(":")[1]
    try:
        proc = await asyncio.create_subprocess_exec(
            binary, "-p", port, "-L", "127.0.0.5", "127.0.0.1",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        await a.services["transport"].endpoint.close()  # type: ignore[attr-defined]
    text = out.decode(errors="replace")
    assert re.search(r"UDP reflexive addr: 127\.0\.0\.5:\d+", text), text


async def test_connect_record_through_a_relay_then_upgraded(tmp_path: Path) -> None:
    from node.overlay.records import sign_record

    relay = await _node(tmp_path, "relay", [])
    b = await _node(tmp_path, "b", [])
    c = await _node(tmp_path, "c", [])
    b.config = config.override(b.config, "network", bootstrap=[relay.urls["listen"]])
    try:
        await nat_of(b)._reserve_relays()
        assert nat_of(b).relay_addresses() == [relay.urls["listen"]]
        # b's record says it cannot be dialled, so c goes through the relay first
        record = sign_record(
            b.identity,
            addresses=(b.urls["listen"],),
            nat_class="symmetric",
            relays=tuple(nat_of(b).relay_addresses()),
            seq=1,
            expires=2_000_000_000,
        )
        conn = await nat_of(c).connect_record(record)
        assert conn.peer_id == b.identity.node_id
        traversal = nat_of(c).traversal
        assert traversal is not None
        for _ in range(100):
            if traversal.counters["punched"] or traversal.counters["punch_failed"]:
                break
            await asyncio.sleep(0.1)
        assert traversal.counters["relayed"] == 1
        assert traversal.counters["punched"] == 1  # loopback: the punch always finds a path
        assert nat_of(c).path_of(conn) == "direct"
        relay_server = nat_of(relay).relay_server
        assert relay_server is not None and relay_server.counters["relayed_bytes"] > 0
    finally:
        for ctx in (relay, b, c):
            await ctx.services["transport"].endpoint.close()  # type: ignore[attr-defined]
