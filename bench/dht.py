"""DHT lookup hops and latency versus network size, on the simulated lossy network.

Run: ``.venv/bin/python -m bench.dht [--sizes 100,1000,10000] [--lookups 200] [--loss 0.05]``

Each size builds a swarm of real Kademlia cores (k=20, alpha=3), joins every node through
three earlier ones (a self-lookup, as a real node joins), then runs lookups of random live
nodes with all nodes up and again with 30 % of them gone. Latency is simulated time (link
latency 10-80 ms one way, RPC timeout 1 s, 3 tries); the reference column is the textbook
Kademlia bound log2(n)/log2(k) rounds. "asked" counts the requests a lookup sent; "all msgs"
divides all swarm traffic in the phase (pings, bucket refreshes, answers) by the lookups.
"""

from __future__ import annotations

import argparse
import math
import time

from node.overlay.sim import Swarm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--lookups", type=int, default=200)
    parser.add_argument("--loss", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    head = (
        f"{'nodes':>6} {'state':>9} {'success':>8} {'hops mean':>9} {'hops p95':>8} "
        f"{'lat p50 s':>9} {'lat p95 s':>9} {'asked':>6} {'all msgs':>8} {'ref hops':>8} "
        f"{'wall s':>7}"
    )
    print(head)
    print("-" * len(head))
    for n in (int(x) for x in args.sizes.split(",")):
        began = time.monotonic()
        swarm = Swarm(n, loss=args.loss, seed=args.seed)
        swarm.join_all()
        ref = math.log2(n) / math.log2(20)
        for state in ("all up", "30% gone"):
            if state == "30% gone":
                swarm.kill(0.30)
            sent = swarm.messages
            t0 = time.monotonic()
            stats = swarm.lookup_stats(args.lookups)
            s = stats.summary()
            per_lookup = (swarm.messages - sent) / max(1, stats.lookups)
            print(
                f"{n:>6} {state:>9} {s['success']:>8.1%} {s['hops_mean']:>9.2f} "
                f"{s['hops_p95']:>8.0f} {s['latency_p50']:>9.2f} {s['latency_p95']:>9.2f} "
                f"{s['queried_mean']:>6.1f} {per_lookup:>8.1f} {ref:>8.2f} "
                f"{time.monotonic() - t0:>7.1f}",
                flush=True,
            )
        print(f"{'':>6} (build + join of {n} nodes: {time.monotonic() - began:.0f} s wall)")


if __name__ == "__main__":
    main()
