"""What the detection thread keeps per (app, field), and what the rest of the daemon reads
from it: the detector series and their Prometheus export."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lookout.series import SeriesPoint

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from lookout.clock import Clock
    from lookout.detectors.drift import DriftResult, DriftWindow
    from lookout.detectors.reference import FittedReference
    from lookout.monitor.detection.service import DetectionService

BUCKET_S = 10.0


@dataclass(frozen=True, slots=True)
class DetectorSeries:
    """One detector series value for rules and status: drift_score (drift_statistic over
    drift_threshold), drift_statistic, drift_threshold or ood_rate."""

    app: str
    field: str
    metric: str
    value: float | None
    count: int

    def point(self) -> SeriesPoint:
        return SeriesPoint(
            self.metric, (("app", self.app), ("field", self.field)), self.value, self.count
        )


class Track:
    """One (app, field). Mutated only on the detection thread; the loop reads `last` and the
    OOD ring, whose writes are single assignments."""

    def __init__(self, app: str, field: str, buckets: int) -> None:
        self.app, self.field = app, field
        self.pending: list[NDArray[np.float32]] = []
        self.pending_texts: list[str] = []
        self.fitted: FittedReference | None = None
        self.fitting = False  # a reference from this track's first texts is being fitted
        self.window: DriftWindow | None = None
        self.ref_id: int | None = None
        self.ref_texts: list[str] = []
        self.recent_texts: deque[str] = deque()
        self.last: DriftResult | None = None
        self.explanation: dict[str, list[str]] | None = None
        self._ring = buckets
        self.ood_bucket = [-1] * buckets
        self.ood_scored = [0] * buckets
        self.ood_flagged = [0] * buckets
        self.changed = False  # since the last checkpoint of its window and OOD counts

    def use(self, fitted: FittedReference, ref_id: int | None, texts: list[str]) -> None:
        self.fitted, self.ref_id, self.ref_texts = fitted, ref_id, texts
        self.fitting = False
        self.window = fitted.drift.new_window()
        self.recent_texts = deque(maxlen=fitted.drift.window)
        self.pending, self.pending_texts, self.last, self.explanation = [], [], None, None

    def count_ood(self, now: float, scored: int, flagged: int) -> None:
        index = int(now // BUCKET_S)
        slot = index % self._ring
        if self.ood_bucket[slot] != index:
            self.ood_scored[slot], self.ood_flagged[slot] = 0, 0
            self.ood_bucket[slot] = index
        self.ood_scored[slot] += scored
        self.ood_flagged[slot] += flagged

    def ood_rows(self) -> NDArray[np.int64]:
        """The OOD ring's live buckets as rows of (bucket index, scored, flagged)."""
        rows = [
            (b, n, f)
            for b, n, f in zip(self.ood_bucket, self.ood_scored, self.ood_flagged, strict=True)
            if b >= 0
        ]
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    def restore_ood(self, rows: NDArray[np.int64]) -> None:
        """Saved buckets back into the ring, where no newer bucket holds their slot."""
        for index, scored, flagged in rows.tolist():
            slot = index % self._ring
            if self.ood_bucket[slot] < index:
                self.ood_bucket[slot] = index
                self.ood_scored[slot], self.ood_flagged[slot] = scored, flagged

    def ood_rate(self, window_s: float, now: float) -> tuple[float | None, int]:
        first = int((now - window_s) // BUCKET_S) + 1
        last = int(now // BUCKET_S)
        scored = flagged = 0
        for slot in range(self._ring):
            if first <= self.ood_bucket[slot] <= last:
                scored += self.ood_scored[slot]
                flagged += self.ood_flagged[slot]
        return (flagged / scored if scored else None), scored


_HELP = {
    "drift_score": "Drift statistic / threshold (above 1: drift)",
    "drift_statistic": "Drift statistic (MMD^2 of the recent window against the reference)",
    "drift_threshold": "Drift threshold, calibrated to the configured ERT",
    "ood_rate": "Share of embedded records flagged out-of-distribution",
}


class DetectorCollector:
    """lookout_drift_score, _drift_statistic, _drift_threshold and lookout_ood_rate, each by
    {app,field}, at scrape time."""

    def __init__(self, service: DetectionService, window_s: float, clock: Clock) -> None:
        self._service, self._window_s, self._clock = service, window_s, clock

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        families = {
            name: GaugeMetricFamily(f"lookout_{name}", text, labels=["app", "field"])
            for name, text in _HELP.items()
        }
        for s in self._service.series(self._window_s, self._clock.now()):
            if s.value is not None:
                families[s.metric].add_metric([s.app, s.field], s.value)
        return list(families.values())
