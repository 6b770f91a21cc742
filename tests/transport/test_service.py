"""The transport inside a real agent: sessions and counters in /api/status and /api/network."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from typing import Any

from node.identity import Identity
from node.transport.endpoint import open_endpoint
from tests.support import RunningAgent


def _get(agent: RunningAgent, path: str) -> Any:
    with urllib.request.urlopen(agent.web + path, timeout=10) as resp:
        return json.load(resp)


def test_agent_reports_sessions(agent: RunningAgent) -> None:
    me = Identity.generate()

    async def run() -> tuple[Any, Any]:
        ep = await open_endpoint(me, "127.0.0.1", 0)
        try:
            conn = await ep.connect(agent.udp)
            assert conn.peer_id.hex() and conn.peer_public_key
            await asyncio.sleep(0.2)
            loop = asyncio.get_running_loop()
            status = await loop.run_in_executor(None, _get, agent, "api/status")
            network = await loop.run_in_executor(None, _get, agent, "api/network")
            return status, network
        finally:
            await ep.close()

    status, network = asyncio.run(run())
    transport = status["services"]["transport"]
    assert transport["sessions"] == 1
    assert transport["handshakes_completed"] == 1
    assert transport["datagrams_in"] >= 2
    assert network["sessions"] == 1
    (peer,) = network["peers"]
    assert peer["node_id"] == me.node_id_text
    assert peer["path"] == "direct"
    assert peer["address"].startswith("127.0.0.1:")
    assert peer["rtt_ms"] is not None
    assert network["bytes_in"] > 0 and network["bytes_out"] > 0
    assert set(network["nat"]) == {"class", "public_address", "port_mapping"}
