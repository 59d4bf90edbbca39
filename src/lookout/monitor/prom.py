"""Prometheus instruments on an explicitly passed registry (never the global one)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lookout.monitor.windows import SERIES_NAMES, WindowStats

LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)

# Unit suffixes for the window gauges, so every exported name carries its unit.
_SERIES_UNITS = {
    "qps": "lookout_requests_per_second",
    "tps": "lookout_output_tokens_per_second",
    "error_rate": "lookout_error_ratio",
    "latency_p50": "lookout_latency_p50_seconds",
    "latency_p95": "lookout_latency_p95_seconds",
    "latency_p99": "lookout_latency_p99_seconds",
    "ttft_p95": "lookout_ttft_p95_seconds",
    "gen_tps_p50": "lookout_generation_tokens_per_second_p50",
    "tokens_per_request": "lookout_tokens_per_request",
    "cost_per_hour": "lookout_cost_per_hour",
}
assert set(_SERIES_UNITS) == set(SERIES_NAMES)


class _RecordChildren:
    """The label children of one (app, model), cached: 1.6 us per record instead of 3.5."""

    __slots__ = ("cost", "errors", "input_tokens", "latency", "ok", "output_tokens")

    def __init__(self, m: IngestMetrics, app: str, model: str) -> None:
        self.ok = m.records.labels(app, model, "ok")
        self.errors = m.records.labels(app, model, "error")
        self.input_tokens = m.tokens.labels(app, model, "input")
        self.output_tokens = m.tokens.labels(app, model, "output")
        self.latency = m.latency.labels(app, model)
        self.cost = m.cost.labels(app, model)


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.records = Counter(
            "lookout_records", "Records accepted", ["app", "model", "status"], registry=registry
        )
        self.tokens = Counter(
            "lookout_tokens", "Tokens reported", ["app", "model", "direction"], registry=registry
        )
        self.cost = Counter(
            "lookout_cost", "Cost from the price table", ["app", "model"], registry=registry
        )
        self.latency = Histogram(
            "lookout_request_latency_seconds",
            "End-to-end LLM request latency",
            ["app", "model"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.rejected = Counter(
            "lookout_records_rejected", "Records rejected", ["reason"], registry=registry
        )
        self.duplicates = Counter(
            "lookout_records_duplicate", "Redelivered records ignored (same id)", registry=registry
        )
        self.messages = Counter(
            "lookout_messages_received", "Messages received", ["source"], registry=registry
        )
        self.dropped = Counter(
            "lookout_dropped",
            "Items dropped because a bounded queue or buffer was full",
            ["queue"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "lookout_ingest_queue_depth", "Messages waiting for processing", registry=registry
        )
        self.paused = Counter(
            "lookout_ingest_paused",
            "Times the bus reader paused for back-pressure",
            registry=registry,
        )
        self.bus_connected = Gauge(
            "lookout_bus_connected", "1 while connected to the broker", registry=registry
        )
        self.bus_reconnects = Counter(
            "lookout_bus_reconnects", "Broker connection attempts that failed", registry=registry
        )
        self.store_writes = Counter(
            "lookout_store_rows_written", "Rows written to the store", ["table"], registry=registry
        )
        self.store_errors = Counter(
            "lookout_store_errors", "Store write batches that failed", registry=registry
        )
        self._children: dict[tuple[str, str], _RecordChildren] = {}

    def children(self, app: str, model: str) -> _RecordChildren:
        key = (app, model)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = _RecordChildren(self, app, model)
        return c


class WindowCollector(Collector):
    """Exports the default window's series as gauges at scrape time."""

    def __init__(self, snapshot: Callable[[], Iterable[WindowStats]]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterable[Metric]:
        families = {
            name: GaugeMetricFamily(
                metric, f"{name} over the default window", labels=["app", "model"]
            )
            for name, metric in _SERIES_UNITS.items()
        }
        for stats in self._snapshot():
            for name, value in stats.series().items():
                if value is not None:
                    families[name].add_metric([stats.app, stats.model], value)
        return list(families.values())
