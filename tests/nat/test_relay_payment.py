"""A relay earns for what it forwards: two agents that can only meet through a public agent
(port-restricted cone and symmetric) exchange data through it, count the bytes, and pay it
with signed relay vouchers that show up in its earnings."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lab import Lab
from tests.lab.conftest import require_lab
from tests.nat.agents import AgentLab, LabAgent


def _relay_earned(agent: LabAgent) -> float:
    doc: dict[str, Any] = agent.api("/api/earnings")
    return float(sum(day["relay"] for day in doc["by_day"]))


def test_relayed_bytes_are_paid_with_relay_vouchers(tmp_path: Path) -> None:
    require_lab()
    # A GiB price high enough that a few hundred kB are worth more than one micro-BCT.
    extra = "[storage]\npay_interval = 2\nrelay_price_per_gib = 1000\n"
    with Lab() as lab:
        agents = AgentLab(lab, tmp_path, extra=extra)
        try:
            agents.start_relays()
            (a,) = agents.add([("port-restricted-cone", 0)])
            (b,) = agents.add([("symmetric", 1)])
            agents.wait_ready([a, b])
            # the DHT may already have sent a little between the two through a relay
            base = {r.name: _relay_earned(r) for r in agents.relays}
            # 4 x 64 KiB echoed through the session (the most one reach moves)
            reached = [a.reach(b, size=65536) for _ in range(4)]
            assert [r["path"] for r in reached] == ["relayed"] * 4
            carried = {r.name: r.status()["services"]["nat"]["relay"] for r in agents.relays}
            (relay,) = [r for r in agents.relays if carried[r.name]["relayed_bytes"] > 0]
            earned = 0.0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and earned < 0.8:
                time.sleep(0.5)
                earned = _relay_earned(relay) - base[relay.name]
            others = [_relay_earned(r) - base[r.name] for r in agents.relays if r is not relay]
            export = relay.api("/api/earnings/export?format=json")
        finally:
            agents.stop()
    # Both ends paid for the bytes their own relayed paths carried, the echo both ways:
    # 2 x 256 KiB (and packet overhead) at 1000 BCT/GiB is about 0.5 BCT per side.
    assert 0.8 <= earned < 1.5, earned
    assert others == [0.0]
    payers = {v["payer"] for v in export["vouchers"] if v["relay"] > 0}
    assert len(payers) == 2  # one channel from each end
