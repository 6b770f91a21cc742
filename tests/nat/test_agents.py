"""Whole agents behind the lab's NAT routers, found through the DHT and driven by HTTP.

The pairing matrix: an agent of each network kind reaches an agent of each kind by node id
(a DHT lookup through the public bootstrap agents), data goes both ways, and both ends show
the session's path kind in ``/api/network``: direct wherever one side has an endpoint-
independent mapping or a port mapping (except port-restricted <-> symmetric: the symmetric
side's random port never passes a port-restricted filter), relayed through a public agent
otherwise.
"""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lab import Lab
from lab.routers import Router
from tests.lab.conftest import require_lab
from tests.nat.agents import KINDS, AgentLab, fresh_tries, run_cells
from tests.nat.matrix import expected_path
from tests.support import require_binary

UPGRADES = [
    ("port-restricted-cone", "port-restricted-cone"),
    ("full-cone", "symmetric"),
    ("symmetric", "restricted-cone"),
    ("upnp", "port-restricted-cone"),
    ("port-restricted-cone", "symmetric"),  # stays relayed
]


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
            # new sessions: relayed at once, then upgraded by hole punching where it can be
            with ThreadPoolExecutor(len(UPGRADES)) as pool:
                fresh = dict(
                    zip(
                        UPGRADES,
                        pool.map(lambda p: fresh_tries(agents.agents[(p[0], 0)],
                                                       agents.agents[(p[1], 1)], 1)[0], UPGRADES),
                        strict=True,
                    )
                )  # fmt: skip
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
    for (a, b), result in fresh.items():
        assert isinstance(result, dict), f"{a} -> {b}: {result}"
        final = "relayed" if result["path"] == "relayed" else "direct"
        assert (result["opened"], final) == ("relayed", expected_path(a, b)), (a, b, result)
    # the side behind the UPnP router says its direct sessions ride on its port mapping
    upnp_cells = [c for c in cells if c.a == "upnp"]
    assert all(set(c.path_ab) == {"port-mapped"} for c in upnp_cells)


def _watch_bindings(watches: dict[str, tuple[Router, str, str]], seconds: float) -> dict[str, int]:
    """Poll each router's conntrack for a binding (src -> dst) for ``seconds``; returns, per
    name, how many polls found it missing."""
    missing = dict.fromkeys(watches, 0)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, (router, src, dst) in watches.items():
            if not router.udp_flows(src, dst):
                missing[name] += 1
        time.sleep(0.2)
    return missing


@pytest.mark.slow
def test_keepalives_sized_from_the_measured_lifetime_hold_the_binding(tmp_path: Path) -> None:
    """Agent ``held`` sits behind a router that forgets idle UDP bindings after 4 s; agent
    ``stale`` measured its router at 8 s, after which the router drops to 2 s, so its
    keepalive interval is too long. Both keep an idle direct session with a public agent."""
    require_lab()
    with Lab() as lab:
        agents = AgentLab(lab, tmp_path)
        try:
            agents.start_relays()
            (held,) = agents.add([("port-restricted-cone", 0)], udp_timeout=4)
            (stale,) = agents.add([("port-restricted-cone", 1)], udp_timeout=8)
            (public,) = agents.add([("public", 0)])
            agents.wait_ready([held, stale, public])
            nat = {}
            deadline = time.monotonic() + 90
            while time.monotonic() < deadline and len(nat) < 2:
                for a in (held, stale):
                    doc = a.status()["services"]["nat"]
                    if doc["binding_lifetime_s"] is not None:
                        nat[a.name] = doc
                time.sleep(1)
            assert len(nat) == 2, f"binding lifetimes not measured: {nat}"
            assert 2 <= nat[held.name]["binding_lifetime_s"] <= 4
            assert 4 <= nat[stale.name]["binding_lifetime_s"] <= 8
            assert nat[held.name]["keepalive_s"] <= 2.0 < nat[stale.name]["keepalive_s"]
            assert stale.router is not None and held.router is not None
            stale.router.set_udp_timeout(2)
            for a in (held, stale):
                assert a.reach(public)["path"] == "direct"
            # idle now: only keepalives cross the routers, for several binding lifetimes
            public_ip = public.ns.addr
            missing = _watch_bindings(
                {
                    "held": (held.router, held.ns.addr, public_ip),
                    "stale": (stale.router, stale.ns.addr, public_ip),
                },
                seconds=16,
            )
            back = public.reach(held)
            sized = {k: (v["binding_lifetime_s"], v["keepalive_s"]) for k, v in nat.items()}
            print(f"lifetime, keepalive: {sized}; polls without the binding: {missing}")
        finally:
            agents.stop()
    assert missing["held"] == 0, missing
    assert missing["stale"] > 0, missing
    assert back["path"] == "direct"


@pytest.mark.slow
def test_a_relay_that_dies_is_replaced(tmp_path: Path) -> None:
    """A port-restricted and a symmetric agent can only meet through a relay; the relaying
    agent is killed (no goodbye) and the session moves to the other public agent by itself.
    Short session timers (1 s keepalive, 5 s idle timeout) make the loss show quickly."""
    require_lab()
    with Lab() as lab:
        agents = AgentLab(lab, tmp_path, network="idle_timeout_s = 5\nkeepalive_s = 1\n")
        try:
            agents.start_relays()
            (a,) = agents.add([("port-restricted-cone", 0)])
            (b,) = agents.add([("symmetric", 1)])
            agents.wait_ready([a, b])
            first = a.reach(b)
            assert first["path"] == "relayed"
            active = {
                r.name: r.status()["services"]["nat"]["relay"]["active"] for r in agents.relays
            }
            (victim,) = [r for r in agents.relays if active[r.name]]
            (other,) = [r for r in agents.relays if r is not victim]
            victim.stop(signal.SIGKILL)
            replaced = 0
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not replaced:
                time.sleep(0.5)
                replaced = sum(
                    x.status()["services"]["nat"]["traversal"]["relay_replaced"] for x in (a, b)
                )
            after_ab, after_ba = a.reach(b), b.reach(a)
            sessions = (a.paths_to(b), b.paths_to(a))
            carried = other.status()["services"]["nat"]["relay"]
        finally:
            agents.stop()
    assert replaced == 1
    assert after_ab["path"] == after_ba["path"] == "relayed"
    assert after_ab["address"] != first["address"]  # a new relayed path (shim)
    assert sessions == (["relayed"], ["relayed"])  # the same session, moved
    assert carried["active"] == 1 and carried["relayed_bytes"] > 0
