"""1,000 DHT nodes on a fake clock and a lossy fake network (deterministic seed)."""

from __future__ import annotations

import pytest

from node.overlay.sim import Swarm


@pytest.mark.slow
def test_thousand_nodes_lookups_with_thirty_percent_gone(
    record_property: pytest.RecordProperty,
) -> None:
    swarm = Swarm(1000, loss=0.05, seed=11)
    swarm.join_all()
    before = swarm.lookup_stats(100)
    swarm.kill(0.30)
    after = swarm.lookup_stats(300)
    for name, stats in (("all_up", before), ("30pct_gone", after)):
        summary = stats.summary()
        record_property(name, summary)
        print(name, {k: round(v, 3) for k, v in summary.items()})
    assert before.success_rate >= 0.99
    assert after.success_rate >= 0.99
    # Kademlia needs O(log n) rounds: log2(1000)/log2(k) is about 2.3
    assert max(after.hops) <= 8
