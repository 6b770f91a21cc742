"""``/metrics``: the dashboard's figures in Prometheus text format, for fleet operators.

A custom collector turns one :func:`node.web.providers.snapshot` into metric families on a
registry of its own (the global prometheus-client registry is never touched). Sections that
are unavailable appear only as ``bitchat_section_available{section=...} 0``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _num(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _gauge(name: str, doc: str, value: Any) -> Iterator[GaugeMetricFamily]:
    v = _num(value)
    if v is not None:
        yield GaugeMetricFamily(name, doc, value=v)


def _counter(name: str, doc: str, value: Any) -> Iterator[CounterMetricFamily]:
    v = _num(value)
    if v is not None:
        yield CounterMetricFamily(name, doc, value=v)


class SnapshotCollector(Collector):
    """Yields the metric families of the snapshot it was given last."""

    def __init__(self) -> None:
        self.snapshot: dict[str, dict[str, Any]] = {}

    def collect(self) -> Iterator[Any]:
        snap = self.snapshot
        st = snap.get("status", {})
        yield InfoMetricFamily(
            "bitchat_node",
            "Identity and version of this box.",
            value={
                "node_id": str(st.get("node_id", "")),
                "version": str(st.get("version", "")),
                "name": str(st.get("name", "")),
            },
        )
        yield from _gauge(
            "bitchat_uptime_seconds", "Seconds since the agent started.", st.get("uptime_s")
        )
        avail = GaugeMetricFamily(
            "bitchat_section_available",
            "1 when the service behind a dashboard section reports, else 0.",
            labels=["section"],
        )
        for name in ("earnings", "storage", "network", "hardware"):
            avail.add_metric([name], 1.0 if snap.get(name, {}).get("available") else 0.0)
        yield avail
        limits = _dict(st.get("limits"))
        yield from _gauge(
            "bitchat_limit_refuse_uploads",
            "1 while new chunks are refused.",
            limits.get("refuse_uploads"),
        )
        yield from _gauge(
            "bitchat_limit_pause_background",
            "1 while background work pauses.",
            limits.get("pause_background"),
        )
        yield from self._earnings(snap.get("earnings", {}))
        yield from self._storage(snap.get("storage", {}))
        yield from self._network(snap.get("network", {}))
        yield from self._hardware(snap.get("hardware", {}))

    def _earnings(self, e: Mapping[str, Any]) -> Iterator[Any]:
        if not e.get("available"):
            return
        fam = GaugeMetricFamily(
            "bitchat_earnings", "Earnings in the ledger's currency.", labels=["period", "currency"]
        )
        cur = str(e.get("currency", ""))
        for period in ("today", "month", "all_time"):
            v = _num(e.get(period))
            if v is not None:
                fam.add_metric([period, cur], v)
        yield fam
        yield from _gauge(
            "bitchat_payment_channels", "Payment channels with vouchers.", e.get("channels")
        )

    def _storage(self, s: Mapping[str, Any]) -> Iterator[Any]:
        if not s.get("available"):
            return
        for key, doc in (
            ("used_bytes", "Bytes of chunks stored."),
            ("allocated_bytes", "Bytes the owner allocated to the network."),
            ("free_bytes", "Free bytes on the data disk."),
        ):
            yield from _gauge(f"bitchat_storage_{key}", doc, s.get(key))
        yield from _gauge("bitchat_storage_chunks", "Chunks stored.", s.get("chunks"))
        yield from _gauge(
            "bitchat_storage_degraded", "1 while storage is degraded.", s.get("degraded")
        )
        contracts = s.get("contracts")
        if isinstance(contracts, list):
            by_state: dict[str, int] = {}
            for c in contracts:
                state = str(_dict(c).get("state", "unknown"))
                by_state[state] = by_state.get(state, 0) + 1
            fam = GaugeMetricFamily("bitchat_contracts", "Storage contracts.", labels=["state"])
            for state, n in sorted(by_state.items()):
                fam.add_metric([state], n)
            yield fam
        scores = _dict(s.get("scores"))
        thresholds = _dict(scores.get("thresholds"))
        score = GaugeMetricFamily("bitchat_score", "Reputation scores (0-1).", labels=["kind"])
        limit = GaugeMetricFamily(
            "bitchat_score_threshold", "Score below which the network acts.", labels=["kind"]
        )
        for kind in ("audit", "online", "suspension"):
            if (v := _num(scores.get(kind))) is not None:
                score.add_metric([kind], v)
            if (t := _num(thresholds.get(kind))) is not None:
                limit.add_metric([kind], t)
        yield score
        yield limit
        bw = _dict(s.get("bandwidth"))
        yield from _counter(
            "bitchat_storage_ingress_bytes", "Chunk bytes received.", bw.get("ingress_bytes")
        )
        yield from _counter(
            "bitchat_storage_egress_bytes", "Chunk bytes served.", bw.get("egress_bytes")
        )

    def _network(self, n: Mapping[str, Any]) -> Iterator[Any]:
        if not n.get("available"):
            return
        yield from _gauge("bitchat_sessions", "Open peer sessions.", n.get("sessions"))
        peers = n.get("peers")
        if isinstance(peers, list):
            fam = GaugeMetricFamily("bitchat_peers", "Peers by path.", labels=["path"])
            counts = {"direct": 0, "port-mapped": 0, "relayed": 0}
            for p in peers:
                path = str(_dict(p).get("path", "unknown"))
                counts[path] = counts.get(path, 0) + 1
            for path, count in sorted(counts.items()):
                fam.add_metric([path], count)
            yield fam
        yield from _counter(
            "bitchat_network_received_bytes", "UDP bytes received.", n.get("bytes_in")
        )
        yield from _counter("bitchat_network_sent_bytes", "UDP bytes sent.", n.get("bytes_out"))

    def _hardware(self, h: Mapping[str, Any]) -> Iterator[Any]:
        if not h.get("available"):
            return
        yield from _gauge(
            "bitchat_cpu_temperature_celsius", "SoC temperature.", h.get("cpu_temp_c")
        )
        throttled = _dict(h.get("throttled"))
        fam = GaugeMetricFamily(
            "bitchat_throttled",
            "Firmware throttle flags (1 = set), now and since boot.",
            labels=["flag", "when"],
        )
        for when in ("now", "since_boot"):
            for flag, value in sorted(_dict(throttled.get(when)).items()):
                if (v := _num(value)) is not None:
                    fam.add_metric([str(flag), when], v)
        yield fam
        findings = h.get("findings")
        if isinstance(findings, list):
            fam = GaugeMetricFamily(
                "bitchat_hardware_findings", "Open hardware findings.", labels=["level"]
            )
            counts: dict[str, int] = {}
            for f in findings:
                level = str(_dict(f).get("level", "info"))
                counts[level] = counts.get(level, 0) + 1
            for level, count in sorted(counts.items()):
                fam.add_metric([level], count)
            yield fam


class Metrics:
    """A private registry with the snapshot collector and the process collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = SnapshotCollector()
        self.registry.register(self.collector)
        ProcessCollector(registry=self.registry)

    def render(self, snapshot: dict[str, dict[str, Any]]) -> bytes:
        self.collector.snapshot = snapshot
        return generate_latest(self.registry)
