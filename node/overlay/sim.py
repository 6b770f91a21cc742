"""A swarm of DHT cores in one process, on a fake clock and a fake lossy network.

Each simulated node is a real :class:`Kademlia` core with its own Ed25519 identity and signed
record; only the network is simulated: every request and answer is delivered after a random
latency or dropped with probability ``loss``, and a node that is down never answers. Tests
and ``bench/dht.py`` use it to measure lookup success and hop counts at scale.
"""

from __future__ import annotations

import heapq
import itertools
import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from nacl.signing import SigningKey

from node.identity import Identity
from node.overlay.dht import Kademlia, LookupDone, OutRequest
from node.overlay.records import NodeRecord, sign_record

RECORD_LIFETIME = 10 * 24 * 3600


@dataclass
class SimNode:
    index: int
    identity: Identity
    core: Kademlia
    alive: bool = True
    timer_at: float | None = None
    done: dict[int, LookupDone] = field(default_factory=dict)

    @property
    def node_id(self) -> bytes:
        return self.core.node_id


@dataclass(frozen=True)
class LookupStats:
    lookups: int
    succeeded: int
    hops: list[int]
    latencies: list[float]
    queried: list[int]

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.lookups if self.lookups else 0.0

    def summary(self) -> dict[str, float]:
        def pct(values: list[float], q: float) -> float:
            ordered = sorted(values)
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0

        return {
            "success": self.success_rate,
            "hops_mean": statistics.fmean(self.hops) if self.hops else 0.0,
            "hops_p95": pct([float(h) for h in self.hops], 0.95),
            "latency_p50": pct(self.latencies, 0.5),
            "latency_p95": pct(self.latencies, 0.95),
            "queried_mean": statistics.fmean(self.queried) if self.queried else 0.0,
        }


class Swarm:
    """``n`` DHT nodes joined through one another on a simulated network."""

    def __init__(
        self,
        n: int,
        *,
        loss: float = 0.0,
        latency: tuple[float, float] = (0.01, 0.08),
        seed: int = 1,
        k: int = 20,
        alpha: int = 3,
        rpc_timeout: float = 1.0,
        tries: int = 3,
    ) -> None:
        self.rng = random.Random(seed)
        self.loss = loss
        self.latency = latency
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.messages = 0
        self.nodes: list[SimNode] = []
        self.by_id: dict[bytes, SimNode] = {}
        for i in range(n):
            ident = Identity(SigningKey(self.rng.randbytes(32)))
            # every node its own /24 so the subnet limit never binds here
            host = f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1"
            record = sign_record(
                ident,
                addresses=(f"{host}:7700",),
                nat_class="public",
                seq=1,
                expires=RECORD_LIFETIME,
            )
            core = Kademlia(
                record,
                k=k,
                alpha=alpha,
                rpc_timeout=rpc_timeout,
                tries=tries,
                rng=random.Random(self.rng.getrandbits(64)),
            )
            node = SimNode(i, ident, core)
            self.nodes.append(node)
            self.by_id[node.node_id] = node

    # -- event loop ---------------------------------------------------------------------------

    def _at(self, when: float, action: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (when, next(self._seq), action))

    def _delay(self) -> float:
        return self.rng.uniform(*self.latency)

    def _pump(self, node: SimNode) -> None:
        for req in node.core.requests_to_send():
            self._send(node, req)
        while (event := node.core.next_event()) is not None:
            if isinstance(event, LookupDone):
                node.done[event.lookup_id] = event
        when = node.core.get_timer()
        if when is not None and (node.timer_at is None or when < node.timer_at):
            node.timer_at = when
            self._at(when, lambda: self._timer(node, when))

    def _timer(self, node: SimNode, when: float) -> None:
        if node.timer_at != when:
            return
        node.timer_at = None
        if node.alive:
            node.core.handle_timer(self.now)
            self._pump(node)

    def _send(self, src: SimNode, req: OutRequest) -> None:
        self.messages += 1
        dest = self.by_id.get(req.dest.node_id)
        if dest is None or self.rng.random() < self.loss:
            return
        self._at(self.now + self._delay(), lambda: self._deliver(src, dest, req))

    def _deliver(self, src: SimNode, dest: SimNode, req: OutRequest) -> None:
        if not dest.alive:
            return
        reply = dest.core.handle_request(src.node_id, req.data, self.now)
        self._pump(dest)
        if reply is None or self.rng.random() < self.loss:
            return
        self.messages += 1

        def answer() -> None:
            if src.alive:
                src.core.handle_response(req.request_id, dest.node_id, reply, self.now)
                self._pump(src)

        self._at(self.now + self._delay(), answer)

    def run(self, until: float | None = None, stop: Callable[[], bool] | None = None) -> None:
        """Process events in time order until ``until``, ``stop()`` is true, or none are left."""
        while self._heap:
            when = self._heap[0][0]
            if until is not None and when > until:
                self.now = until
                return
            if stop is not None and stop():
                return
            heapq.heappop(self._heap)[2]()
            self.now = max(self.now, when)

    # -- scenarios ----------------------------------------------------------------------------

    def join_all(self, batch: int = 50, bootstrap: int = 3) -> None:
        """Nodes join in batches, each through ``bootstrap`` nodes that joined before it."""
        first = self.nodes[0]
        for start in range(1, len(self.nodes), batch):
            for node in self.nodes[start : start + batch]:
                for peer in self.rng.sample(self.nodes[:start], min(bootstrap, start)):
                    node.core.add_contact(peer.core.record, self.now)
                node.core.find_node(node.node_id, self.now)
                self._pump(node)
            self.run(until=self.now + 30.0)
        first.core.find_node(first.node_id, self.now)
        self._pump(first)
        self.run(until=self.now + 30.0)

    def kill(self, fraction: float) -> list[SimNode]:
        """Take ``fraction`` of the nodes down at random; returns them."""
        gone = self.rng.sample(self.nodes, int(len(self.nodes) * fraction))
        for node in gone:
            node.alive = False
        return gone

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes if n.alive]

    def lookup(self, src: SimNode, target: bytes) -> tuple[LookupDone | None, float]:
        """Run one FIND_NODE from ``src`` to completion; returns its result and duration."""
        lookup_id = src.core.find_node(target, self.now)
        started = self.now
        self._pump(src)
        self.run(stop=lambda: lookup_id in src.done, until=self.now + 600.0)
        return src.done.pop(lookup_id, None), self.now - started

    def lookup_stats(self, count: int) -> LookupStats:
        """``count`` lookups of random live nodes from random live nodes."""
        live = self.live()
        ok = 0
        hops: list[int] = []
        latencies: list[float] = []
        queried: list[int] = []
        for _ in range(count):
            src, dst = self.rng.sample(live, 2)
            done, took = self.lookup(src, dst.node_id)
            if done is not None:
                queried.append(done.queried)
            if done is not None and done.nodes and done.nodes[0].node_id == dst.node_id:
                ok += 1
                hops.append(done.hops)
                latencies.append(took)
        return LookupStats(count, ok, hops, latencies, queried)

    def record_of(self, index: int) -> NodeRecord:
        return self.nodes[index].core.record
