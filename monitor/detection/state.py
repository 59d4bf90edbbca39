"""What the rest of the daemon reads from the detectors: each track's series for rules and
/metrics, and its status for the API."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from lookout.series import SeriesPoint

if TYPE_CHECKING:
    from collections.abc import Iterable

    from lookout.clock import Clock
    from lookout.monitor.detection.tracks import Track


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


def detector_series(tracks: Iterable[Track], window_s: float, now: float) -> list[DetectorSeries]:
    out = []
    for track in tracks:
        last = track.last
        if track.fitted is None:
            continue
        count = last.count if last is not None else 0
        drift = last.drift_score if last is not None else None
        out.append(DetectorSeries(track.app, track.field, "drift_score", drift, count))
        statistic = last.score if last is not None else None
        out.append(DetectorSeries(track.app, track.field, "drift_statistic", statistic, count))
        threshold = track.fitted.drift.threshold
        out.append(DetectorSeries(track.app, track.field, "drift_threshold", threshold, count))
        rate, scored = track.ood_rate(window_s, now)
        out.append(DetectorSeries(track.app, track.field, "ood_rate", rate, scored))
    return out


def detector_status(
    tracks: Iterable[Track], window_s: float, now: float, reference_size: int
) -> list[dict[str, Any]]:
    listed = []
    for track in tracks:
        last = track.last
        entry: dict[str, Any] = {
            "app": track.app,
            "field": track.field,
            "reference_id": track.ref_id,
            "reference_pending": None if track.fitted else len(track.pending_texts),
            "reference_size_needed": reference_size,
        }
        if track.fitted is not None:
            rate, scored = track.ood_rate(window_s, now)
            entry.update(
                {
                    "drift_score": None if last is None else last.drift_score,
                    "drift_statistic": None if last is None else last.score,
                    "drift_threshold": track.fitted.drift.threshold,
                    "drifted": bool(last is not None and last.drifted),
                    "window_count": 0 if last is None else last.count,
                    "ood_threshold": track.fitted.ood.threshold,
                    "ood_rate": rate,
                    "ood_scored": scored,
                    "explanation": track.explanation,
                }
            )
        listed.append(entry)
    return sorted(listed, key=lambda e: (e["app"], e["field"]))


class DetectorSeriesSource(Protocol):
    def series(self, window_s: float, now: float) -> list[DetectorSeries]: ...


_HELP = {
    "drift_score": "Drift statistic / threshold (above 1: drift)",
    "drift_statistic": "Drift statistic (MMD^2 of the recent window against the reference)",
    "drift_threshold": "Drift threshold, calibrated to the configured ERT",
    "ood_rate": "Share of embedded records flagged out-of-distribution",
}


class DetectorCollector:
    """lookout_drift_score, _drift_statistic, _drift_threshold and lookout_ood_rate, each by
    {app,field}, at scrape time."""

    def __init__(self, source: DetectorSeriesSource, window_s: float, clock: Clock) -> None:
        self._source, self._window_s, self._clock = source, window_s, clock

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        families = {
            name: GaugeMetricFamily(f"lookout_{name}", text, labels=["app", "field"])
            for name, text in _HELP.items()
        }
        for s in self._source.series(self._window_s, self._clock.now()):
            if s.value is not None:
                families[s.metric].add_metric([s.app, s.field], s.value)
        return list(families.values())
