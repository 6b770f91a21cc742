"""The NAT pairing matrix: path kind, time to first byte and success over many tries.

Run (root, in the lab): ``.venv/bin/python -m bench.nat [--tries 20] [--kinds a,b,...]
[--agents]``

Every cell connects a fresh peer of one network kind to a fresh peer of another (new
sockets, so new NAT bindings) through :class:`node.transport.nat.traversal.Traversal`:
direct when the peer is reachable, else relayed at once and upgraded by hole punching.
Time to first byte is from the start of the connection attempt to the first echoed byte.

With ``--agents`` the cells are whole ``bitchat-node run`` agents behind the same routers
(``tests/nat/agents.py``), two public agents as bootstrap peers and relays: each try is
``POST /api/network/reach`` with ``fresh`` (the sessions between the two are closed first),
so it times a DHT lookup by node id, a new session and a 1 KiB echo; the path is what the
initiating agent reports once any hole-punching upgrade has ended. Cells run side by side.
Targets: 100 % success in every cell, direct wherever a direct path exists, TTFB <= 2 s
direct and <= 5 s relayed. Reference: libp2p's public hole-punching measurement campaign
(DCUtR) reported roughly 70 % success for punching attempts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from lab import Lab
from tests.nat.agents import AgentLab, fresh_tries
from tests.nat.matrix import KINDS, Matrix, expected_path, run_cell

SHORT = {"public": "public", "full-cone": "full", "restricted-cone": "restr",
         "port-restricted-cone": "port-r", "symmetric": "sym", "upnp": "upnp"}  # fmt: skip
HEAD = (
    f"{'from':>7} {'to':>7} {'want':>8} {'direct':>6} {'relayed':>7} {'success':>8} "
    f"{'ttfb p50':>9} {'ttfb p95':>9} {'target':>7} {'met':>4}"
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def row(a: str, b: str, tries: int, direct: int, relayed: int, ttfb: list[float]) -> bool:
    """Print one cell of the table; True when it meets its targets."""
    want = expected_path(a, b)
    target = 2.0 if want == "direct" else 5.0
    ok = direct + relayed
    met = (
        ok == tries
        and (direct == tries if want == "direct" else True)
        and pct(ttfb, 0.95) <= target
    )
    print(
        f"{SHORT[a]:>7} {SHORT[b]:>7} {want:>8} {direct:>6} {relayed:>7} "
        f"{ok / tries:>8.0%} {statistics.median(ttfb) if ttfb else 0:>8.3f}s"
        f" {pct(ttfb, 0.95):>8.3f}s {target:>6.0f}s {'yes' if met else 'NO':>4}",
        flush=True,
    )
    return met


def main_agents(tries: int, kinds: tuple[str, ...], workers: int) -> None:
    print(f"whole agents, {tries} fresh tries per cell, {workers} cells at a time")
    print(HEAD)
    print("-" * len(HEAD))
    began = time.monotonic()
    pairs = [(a, b) for a in kinds for b in kinds]
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        agents = AgentLab(lab, Path(tmp))
        try:
            agents.start_relays()
            started = agents.add([(k, s) for k in kinds for s in (0, 1)])
            agents.wait_ready(started)
            ready = time.monotonic() - began

            def cell(pair: tuple[str, str]) -> list[dict[str, Any] | str]:
                return fresh_tries(agents.agents[(pair[0], 0)], agents.agents[(pair[1], 1)], tries)

            with ThreadPoolExecutor(workers) as pool:
                results = dict(zip(pairs, pool.map(cell, pairs), strict=True))
        finally:
            agents.stop()
    total_ok = met_cells = 0
    for (a, b), tried in results.items():
        done = [r for r in tried if isinstance(r, dict)]
        direct = sum(r["path"] != "relayed" for r in done)
        met_cells += row(a, b, tries, direct, len(done) - direct, [r["echo_s"] for r in done])
        total_ok += len(done)
        for r in tried:
            if isinstance(r, str):
                print(f"        failure: {r[:300]}")
    print(
        f"\nall cells: {total_ok}/{tries * len(pairs)} tries succeeded "
        f"({total_ok / (tries * len(pairs)):.1%}); {met_cells}/{len(pairs)} cells meet their "
        f"targets; agents ready in {ready:.0f} s, {time.monotonic() - began:.0f} s wall. "
        "Reference: libp2p DCUtR ~70 % punch success."
    )


async def main_async(tries: int, kinds: tuple[str, ...]) -> None:
    print(HEAD)
    print("-" * len(HEAD))
    total_ok = total = punched_cells = 0
    began = time.monotonic()
    with Lab() as lab:
        matrix = Matrix(lab)
        await matrix.start_relay()
        try:
            for a in kinds:
                for b in kinds:
                    want = expected_path(a, b)
                    results = [await run_cell(matrix, a, b) for _ in range(tries)]
                    ok = [r for r in results if r.ok]
                    direct = sum(r.path == "direct" for r in ok)
                    relayed = sum(r.path == "relayed" for r in ok)
                    row(a, b, tries, direct, relayed, [r.ttfb for r in ok])
                    total_ok += len(ok)
                    total += tries
                    punched_cells += want == "direct"
                    for r in results:
                        if not r.ok:
                            print(f"        failure: {r.error}")
        finally:
            await matrix.stop_relay()
    print(
        f"\nall cells: {total_ok}/{total} tries succeeded ({total_ok / total:.1%}); "
        f"{punched_cells} of {len(kinds) ** 2} cells can be direct; "
        f"{time.monotonic() - began:.0f} s wall. Reference: libp2p DCUtR ~70 % punch success."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=20)
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--agents", action="store_true", help="whole agents, not endpoints")
    parser.add_argument("--workers", type=int, default=6, help="cells at a time (--agents)")
    args = parser.parse_args()
    kinds = tuple(args.kinds.split(","))
    if args.agents:
        main_agents(args.tries, kinds, args.workers)
    else:
        asyncio.run(main_async(args.tries, kinds))


if __name__ == "__main__":
    main()
