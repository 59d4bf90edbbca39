"""Users' feedback as series: per (app, key), over sliding windows in bounded memory.

Each (app, key) keeps one small bucket (events, score sum, negatives) per `bucket_s` of the
longest window; a query adds the buckets it covers. Apps and keys past their caps are counted
under `other`, so a flood of made-up keys cannot grow memory or Prometheus' label sets.
Feedback is counted when it is received, as records are: a thumbs-down given ten minutes after
its answer moves this minute's series, which is when someone can still act on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lookout.monitor.metrics.windows import LabelFolder
from lookout.series import SeriesPoint


@dataclass(slots=True)
class _Bucket:
    index: int
    count: int = 0
    score_sum: float = 0.0
    negatives: int = 0


class FeedbackWindows:
    """Not thread-safe: owned by the ingest loop."""

    def __init__(
        self,
        *,
        bucket_s: float = 10.0,
        max_window_s: float = 3600.0,
        max_apps: int = 50,
        max_keys: int = 20,
        pinned_apps: Iterable[str] = (),
    ) -> None:
        self.bucket_s = bucket_s
        self.max_window_s = max_window_s
        self._apps = LabelFolder(max_apps, pinned_apps)
        self._keys = LabelFolder(max_keys)
        self._cells: dict[tuple[str, str], dict[int, _Bucket]] = {}

    def observe(self, app: str, key: str, score: float, negative: bool, now: float) -> None:
        """Count one event at `now` (`negative` judged on its own key, not the folded one)."""
        cell_key = (self._apps.fold(app), self._keys.fold(key))
        buckets = self._cells.setdefault(cell_key, {})
        index = int(now // self.bucket_s)
        bucket = buckets.get(index)
        if bucket is None:
            bucket = buckets[index] = _Bucket(index)
            self._prune(buckets, index)
        bucket.count += 1
        bucket.score_sum += score
        bucket.negatives += negative

    def _prune(self, buckets: dict[int, _Bucket], index: int) -> None:
        oldest = index - int(self.max_window_s // self.bucket_s) - 1
        for old in [i for i in buckets if i < oldest]:
            del buckets[old]

    def points(self, window_s: float, now: float) -> list[SeriesPoint]:
        """feedback_count, feedback_score and negative_feedback_rate per (app, key) over the
        window ending at `now` (buckets whose start lies in it)."""
        first = math.ceil((now - min(window_s, self.max_window_s)) / self.bucket_s - 1e-9)
        last = int(now // self.bucket_s)
        out: list[SeriesPoint] = []
        for (app, key), buckets in sorted(self._cells.items()):
            inside = [b for b in buckets.values() if first <= b.index <= last]
            count = sum(b.count for b in inside)
            if not count:
                continue
            labels = (("app", app), ("key", key))
            mean = sum(b.score_sum for b in inside) / count
            rate = sum(b.negatives for b in inside) / count
            out += [
                SeriesPoint("feedback_count", labels, float(count), count),
                SeriesPoint("feedback_score", labels, mean, count),
                SeriesPoint("negative_feedback_rate", labels, rate, count),
            ]
        return out

    def prune(self, now: float) -> None:
        """Forget (app, key) cells with nothing left inside the longest window."""
        index = int(now // self.bucket_s)
        for cell_key, buckets in list(self._cells.items()):
            self._prune(buckets, index)
            if not buckets:
                del self._cells[cell_key]


_GAUGES = {
    "feedback_count": ("lookout_feedback_events", "Feedback events over the default window"),
    "feedback_score": ("lookout_feedback_score_mean", "Mean feedback score over the window"),
    "negative_feedback_rate": (
        "lookout_feedback_negative_ratio",
        "Share of feedback at or below its key's negative score over the window",
    ),
}


class FeedbackCollector(Collector):
    """The default window's feedback series as gauges, at scrape time."""

    def __init__(self, points: Callable[[], list[SeriesPoint]]) -> None:
        self._points = points

    def collect(self) -> Iterable[Metric]:
        families = {
            name: GaugeMetricFamily(metric, doc, labels=["app", "key"])
            for name, (metric, doc) in _GAUGES.items()
        }
        for p in self._points():
            if p.value is not None:
                families[p.metric].add_metric([v for _, v in p.labels], p.value)
        return list(families.values())


class FeedbackMetrics:
    """Feedback ingest counters, on the daemon's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.accepted = Counter(
            "lookout_feedback_accepted", "Feedback events accepted", registry=registry
        )
        self.duplicates = Counter(
            "lookout_feedback_duplicate",
            "Feedback events ignored: the same (app, record, key, user) was counted already",
            registry=registry,
        )
        self.rejected = Counter(
            "lookout_feedback_rejected", "Feedback events rejected", ["reason"], registry=registry
        )
