"""Whole agents behind the lab's NAT routers, found through the DHT and driven by HTTP.

The pairing matrix: an agent of each network kind reaches an agent of each kind by node id
(a DHT lookup through the public bootstrap agents), data goes both ways, and both ends show
the session's path kind in ``/api/network``: direct wherever one side has an endpoint-
independent mapping or a port mapping (except port-restricted <-> symmetric: the symmetric
side's random port never passes a port-restricted filter), relayed through a public agent
otherwise.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lab import Lab
from tests.lab.conftest import require_lab
from tests.nat.agents import KINDS, AgentLab, run_cells
from tests.support import require_binary


@pytest.mark.slow
def test_pairing_matrix_with_whole_agents(tmp_path: Path) -> None:
    require_lab()
    require_binary("miniupnpd", "miniupnpd-nftables")
    with Lab() as lab:
        agents = AgentLab(lab, tmp_path)
        try:
            agents.start_relays()
            started = agents.add([(kind, slot) for kind in KINDS for slot in (0, 1)])
            agents.wait_ready(started)
            classes = {a.name: a.status()["services"]["nat"]["class"] for a in started}
            cells = run_cells(agents, [(a, b) for a in KINDS for b in KINDS])
        finally:
            agents.stop()
    for cell in cells:
        print(cell.line())
    # what discovery from two ordinary STUN servers (the bootstrap agents) can tell
    assert classes["pub0"] == classes["pub1"] == "public"
    assert classes["sym0"] == classes["sym1"] == "symmetric"
    assert {classes[f"{k}{s}"] for k in ("fc", "rc", "prc", "upnp") for s in (0, 1)} == {"cone"}
    failures = [cell.line() for cell in cells if not cell.ok]
    assert not failures, "\n".join(failures)
    relayed = sorted((c.a, c.b) for c in cells if c.path == "relayed")
    assert relayed == [
        ("port-restricted-cone", "symmetric"),
        ("symmetric", "port-restricted-cone"),
        ("symmetric", "symmetric"),
    ]
    # the side behind the UPnP router says its direct sessions ride on its port mapping
    upnp_cells = [c for c in cells if c.a == "upnp"]
    assert all(set(c.path_ab) == {"port-mapped"} for c in upnp_cells)
