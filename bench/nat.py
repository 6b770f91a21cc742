"""The NAT pairing matrix: path kind, time to first byte and success over many tries.

Run (root, in the lab): ``.venv/bin/python -m bench.nat [--tries 20] [--kinds a,b,...]``

Every cell connects a fresh peer of one network kind to a fresh peer of another (new
sockets, so new NAT bindings) through :class:`node.transport.nat.traversal.Traversal`:
direct when the peer is reachable, else relayed at once and upgraded by hole punching.
Time to first byte is from the start of the connection attempt to the first echoed byte.
Targets: 100 % success in every cell, direct wherever a direct path exists, TTFB <= 2 s
direct and <= 5 s relayed. Reference: libp2p's public hole-punching measurement campaign
(DCUtR) reported roughly 70 % success for punching attempts.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from lab import Lab
from tests.nat.matrix import KINDS, Matrix, expected_path, run_cell


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


async def main_async(tries: int, kinds: tuple[str, ...]) -> None:
    short = {"public": "public", "full-cone": "full", "restricted-cone": "restr",
             "port-restricted-cone": "port-r", "symmetric": "sym", "upnp": "upnp"}  # fmt: skip
    head = (
        f"{'from':>7} {'to':>7} {'want':>8} {'direct':>6} {'relayed':>7} {'success':>8} "
        f"{'ttfb p50':>9} {'ttfb p95':>9} {'target':>7} {'met':>4}"
    )
    print(head)
    print("-" * len(head))
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
                    ttfb = [r.ttfb for r in ok]
                    target = 2.0 if want == "direct" else 5.0
                    met = (
                        len(ok) == tries
                        and (direct == tries if want == "direct" else True)
                        and pct(ttfb, 0.95) <= target
                    )
                    total_ok += len(ok)
                    total += tries
                    punched_cells += want == "direct"
                    print(
                        f"{short[a]:>7} {short[b]:>7} {want:>8} {direct:>6} {relayed:>7} "
                        f"{len(ok) / tries:>8.0%} {statistics.median(ttfb) if ttfb else 0:>8.3f}s"
                        f" {pct(ttfb, 0.95):>8.3f}s {target:>6.0f}s {'yes' if met else 'NO':>4}",
                        flush=True,
                    )
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
    args = parser.parse_args()
    asyncio.run(main_async(args.tries, tuple(args.kinds.split(","))))


if __name__ == "__main__":
    main()
