"""Tool and retrieval use per app (and tool), over sliding windows in bounded memory.

Only records that carry `tools` or `retrieval` reach here; the per-request rates divide by the
app's record count in the same window, which the main windows already keep. Tool names past
`max_tools` are counted under `other` (and each such call in `folded`), so an app that names
its tools by request id cannot grow memory or Prometheus' label sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

from fastdigest import TDigest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lookout.monitor.ingest.tool_use import Retrieval, ToolCall
from lookout.monitor.metrics.windows import OTHER, LabelFolder
from lookout.series import SeriesPoint

_CENTROIDS = 100
_BATCH = 512
_MANY = 8  # records from which observe_many gathers per label (its fixed cost is ~2 us)
RETRIEVAL = "retrieval"  # the cell of an app's retrievals, beside its tools' cells
# (window_s, now) -> records per folded app over that window
RequestCounts = Callable[[float, float], dict[str, int]]


class Uses(Protocol):
    """What the tool windows read of a record."""

    @property
    def tools(self) -> list[ToolCall] | None: ...
    @property
    def retrieval(self) -> Retrieval | None: ...


class _Use(NamedTuple):
    tools: list[ToolCall] | None
    retrieval: Retrieval | None


class _Bucket:
    __slots__ = (
        "calls",
        "empty",
        "end",
        "errors",
        "index",
        "latency_ms",
        "latency_s",
        "sized",
        "start",
    )

    def __init__(self, index: int, bucket_s: float) -> None:
        self.index = index
        self.start = index * bucket_s
        self.end = self.start + bucket_s
        self.calls = 0
        self.errors = 0
        self.empty = 0  # retrievals that returned no document
        self.sized = 0  # retrievals that said how many documents
        # Latencies are appended (cheaper than a digest update) and compressed in batches.
        self.latency_ms: list[float] = []
        self.latency_s: TDigest | None = None

    def count_one(self, status: str, latency_ms: float | None) -> None:
        """One tool call or retrieval."""
        self.calls += 1
        if status != "ok":
            self.errors += 1
        if latency_ms is not None:
            latencies = self.latency_ms
            latencies.append(latency_ms)
            if len(latencies) >= _BATCH:
                self.digest()

    def count(self, statuses: list[str], latencies_ms: list[float | None]) -> None:
        """Tool calls or retrievals: their statuses and latencies, in order."""
        self.calls += len(statuses)
        self.errors += len(statuses) - statuses.count("ok")
        values = [ms for ms in latencies_ms if ms is not None]
        pending = self.latency_ms
        while values:
            # Compressed at the same points as one by one: the digest comes out the same.
            room = _BATCH - len(pending)
            pending += values[:room]
            values = values[room:]
            if len(pending) >= _BATCH:
                self.digest()
                pending = self.latency_ms

    def digest(self) -> TDigest | None:
        """The latencies (seconds) so far, compressed."""
        if self.latency_ms:
            if self.latency_s is None:
                self.latency_s = TDigest(max_centroids=_CENTROIDS)
            self.latency_s.batch_update([ms / 1000.0 for ms in self.latency_ms])
            self.latency_ms = []
        return self.latency_s


class ToolWindows:
    """Not thread-safe: owned by the ingest loop."""

    def __init__(
        self,
        requests: RequestCounts,
        *,
        bucket_s: float = 10.0,
        max_window_s: float = 3600.0,
        max_tools: int = 20,
    ) -> None:
        self._requests = requests
        self.bucket_s = bucket_s
        self.max_window_s = max_window_s
        self._fold = LabelFolder(max_tools, pinned=(RETRIEVAL,)).fold
        # (app, tool name or RETRIEVAL) -> bucket index -> bucket
        self._cells: dict[tuple[str, str], dict[int, _Bucket]] = {}
        self._current: dict[str, dict[str, _Bucket]] = {}  # app -> name -> newest bucket
        self._names: dict[str, str] = {}  # tool names that hold a label (at most max_tools)
        self.folded = 0  # tool calls counted under `other`

    def observe(
        self, app: str, tools: list[ToolCall] | None, retrieval: Retrieval | None, now: float
    ) -> None:
        """A record's tool calls and retrieval, at `now`, under its folded app label. About
        0.4 us for one call and a retrieval (docs/benchmarks.md)."""
        current = self._current.get(app)
        if current is None:
            current = self._current[app] = {}
        if tools:
            names = self._names
            for call in tools:
                name = names.get(call.name) or self._label_of(call.name)
                if name is OTHER:
                    self.folded += 1
                bucket = current.get(name)
                if bucket is None or not bucket.start <= now < bucket.end:
                    bucket = self._bucket(app, name, now)
                bucket.count_one(call.status, call.latency_ms)
        if retrieval is not None:
            bucket = current.get(RETRIEVAL)
            if bucket is None or not bucket.start <= now < bucket.end:
                bucket = self._bucket(app, RETRIEVAL, now)
            bucket.count_one(retrieval.status, retrieval.latency_ms)
            if retrieval.documents is not None:
                bucket.sized += 1
                if not retrieval.documents:
                    bucket.empty += 1

    def observe_many(self, app: str, records: Sequence[Uses], now: float) -> None:
        """`observe` for each record, all of `app` at `now` (a message's records): the same
        counts, and the same latencies in the same order per (app, tool label), gathered per
        label and added once per label. About 5k instructions a record with one tool call and a
        retrieval in batches of 50, half the per-record path's (docs/benchmarks.md)."""
        if len(records) < _MANY:
            for record in records:
                self.observe(app, record.tools, record.retrieval, now)
            return
        calls = [call for r in records if r.tools for call in r.tools]
        by_label = self._by_label(calls) if calls else {}
        if RETRIEVAL in by_label:
            # A tool named like the retrieval cell: its calls and the retrievals interleave
            # there, record by record.
            for record in records:
                self.observe(app, record.tools, record.retrieval, now)
            return
        self.folded += len(by_label.get(OTHER, ()))
        for label, calls in by_label.items():
            self._current_bucket(app, label, now).count(
                [c.status for c in calls], [c.latency_ms for c in calls]
            )
        retrievals = [r.retrieval for r in records if r.retrieval is not None]
        if retrievals:
            bucket = self._current_bucket(app, RETRIEVAL, now)
            bucket.count([r.status for r in retrievals], [r.latency_ms for r in retrievals])
            documents = [r.documents for r in retrievals]
            bucket.sized += len(documents) - documents.count(None)
            bucket.empty += documents.count(0)

    def _by_label(self, calls: list[ToolCall]) -> dict[str, list[ToolCall]]:
        """`calls` by label, in order (labels given to new names as they come)."""
        names = {call.name for call in calls}
        if len(names) == 1:  # the usual batch: one tool
            (name,) = names
            return {self._names.get(name) or self._label_of(name): calls}
        by_label: dict[str, list[ToolCall]] = {}
        of_name: dict[str, list[ToolCall]] = {}  # a name's label's list
        for call in calls:
            same = of_name.get(call.name)
            if same is None:
                label = self._names.get(call.name) or self._label_of(call.name)
                same = of_name[call.name] = by_label.setdefault(label, [])
            same.append(call)
        return by_label

    def _current_bucket(self, app: str, name: str, now: float) -> _Bucket:
        current = self._current.get(app)
        bucket = None if current is None else current.get(name)
        if bucket is None or not bucket.start <= now < bucket.end:
            bucket = self._bucket(app, name, now)
        return bucket

    def _label_of(self, name: str) -> str:
        """A tool's label: its name, or `other` past the cap."""
        label = self._fold(name)
        if label is not OTHER:
            self._names[name] = label
        return label

    def _bucket(self, app: str, name: str, at: float) -> _Bucket:
        buckets = self._cells.setdefault((app, name), {})
        index = int(at // self.bucket_s)
        bucket = buckets.get(index)
        if bucket is None:
            bucket = buckets[index] = _Bucket(index, self.bucket_s)
            oldest = index - int(self.max_window_s // self.bucket_s) - 1
            for old in [i for i in buckets if i < oldest]:
                del buckets[old]
        current = self._current.setdefault(app, {})
        held = current.get(name)
        if held is None or index >= held.index:
            current[name] = bucket
        return bucket

    def points(self, window_s: float, now: float) -> list[SeriesPoint]:
        """Per (app, tool): tool_calls_per_request, tool_error_rate, tool_latency_p95; per app:
        retrieval_rate, retrieval_latency_p95, empty_retrieval_rate; over the window ending
        at `now` (buckets whose start lies in it)."""
        first = math.ceil((now - min(window_s, self.max_window_s)) / self.bucket_s - 1e-9)
        last = int(now // self.bucket_s)
        requests = self._requests(window_s, now)
        self.prune(now)
        out: list[SeriesPoint] = []
        for (app, name), buckets in sorted(self._cells.items()):
            inside = [b for b in buckets.values() if first <= b.index <= last]
            calls = sum(b.calls for b in inside)
            if calls:
                out += _cell_points(app, name, inside, calls, requests.get(app, 0))
        return out

    def prune(self, now: float) -> None:
        """Forget (app, tool) cells with nothing left inside the longest window."""
        index = int(now // self.bucket_s) - int(self.max_window_s // self.bucket_s) - 1
        for (app, name), buckets in list(self._cells.items()):
            if all(i < index for i in buckets):
                del self._cells[(app, name)]
                self._current.get(app, {}).pop(name, None)


def _cell_points(
    app: str, name: str, buckets: list[_Bucket], calls: int, requests: int
) -> list[SeriesPoint]:
    latency = TDigest(max_centroids=_CENTROIDS)
    for b in buckets:
        digest = b.digest()
        if digest is not None:
            latency.merge_inplace(digest)
    p95 = None if latency.is_empty() else float(latency.quantile(0.95))
    per_request = calls / requests if requests else None
    if name == RETRIEVAL:
        labels: tuple[tuple[str, str], ...] = (("app", app),)
        sized = sum(b.sized for b in buckets)
        empty = sum(b.empty for b in buckets) / sized if sized else None
        return [
            SeriesPoint("retrieval_rate", labels, per_request, requests),
            SeriesPoint("retrieval_latency_p95", labels, p95, calls),
            SeriesPoint("empty_retrieval_rate", labels, empty, sized),
        ]
    labels = (("app", app), ("tool", name))
    errors = sum(b.errors for b in buckets)
    return [
        SeriesPoint("tool_calls_per_request", labels, per_request, requests),
        SeriesPoint("tool_error_rate", labels, errors / calls, calls),
        SeriesPoint("tool_latency_p95", labels, p95, calls),
    ]


_GAUGES = {
    "tool_calls_per_request": ("lookout_tool_calls_per_request", ["app", "tool"]),
    "tool_error_rate": ("lookout_tool_error_ratio", ["app", "tool"]),
    "tool_latency_p95": ("lookout_tool_latency_p95_seconds", ["app", "tool"]),
    "retrieval_rate": ("lookout_retrieval_ratio", ["app"]),
    "retrieval_latency_p95": ("lookout_retrieval_latency_p95_seconds", ["app"]),
    "empty_retrieval_rate": ("lookout_empty_retrieval_ratio", ["app"]),
}


class ToolCollector(Collector):
    """The default window's tool and retrieval series as gauges, at scrape time."""

    def __init__(self, windows: ToolWindows, points: Callable[[], list[SeriesPoint]]) -> None:
        self._windows = windows
        self._points = points

    def collect(self) -> Iterable[Metric]:
        families = {
            name: GaugeMetricFamily(metric, f"{name} over the default window", labels=labels)
            for name, (metric, labels) in _GAUGES.items()
        }
        for p in self._points():
            if p.value is not None:
                families[p.metric].add_metric([v for _, v in p.labels], p.value)
        folded = CounterMetricFamily(
            "lookout_tool_calls_folded",
            "Tool calls counted under `other`: past tools.max_names tool names",
            value=self._windows.folded,
        )
        return [*families.values(), folded]
