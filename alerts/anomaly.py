"""Anomaly rules (`op: anomaly`): a rule's windowed value read against the series' learned
normal instead of a fixed threshold.

The engine asks an `AnomalyScorer` (the daemon's, fed from the per-minute rollups; this
package never sees where) for each (rule, labels) value; the reading's score (its robust z, or
the shape score of the last few minutes where that is higher) decides the breach and becomes
the alert's value, and its band is what the notification calls usual.
While a series has too little history the reading says so (baseline `learning`): no breach,
no data, logged once.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import structlog

from lookout.alerts.rules import Observation
from lookout.detectors.anomaly import AnomalyScore, Baseline

log = structlog.get_logger(__name__)
Labels = tuple[tuple[str, str], ...]


class AnomalyScorer(Protocol):
    """Scores a rule's value for one label set against what that series usually does at `now`
    (never learning from it: learning is the scorer's own business)."""

    def assess(self, rule: str, labels: Labels, value: float, now: float, /) -> AnomalyScore: ...


class AnomalyReadings:
    """The last reading per (rule, labels), for notifications and status."""

    def __init__(self, scorer: AnomalyScorer) -> None:
        self._scorer = scorer
        self.last: dict[tuple[str, Labels], AnomalyScore] = {}
        self._told_learning: set[tuple[str, Labels]] = set()

    def observe(
        self, rule: str, metric: str, observations: Iterable[Observation], now: float
    ) -> list[Observation]:
        """The observations with the breach decided by the scorer and the value its score."""
        out = []
        for obs in observations:
            if obs.value is None or obs.breached is None:
                out.append(obs)
                continue
            reading = self._scorer.assess(rule, obs.labels, obs.value, now)
            key = (rule, obs.labels)
            self.last[key] = reading
            if reading.baseline is Baseline.LEARNING:
                if key not in self._told_learning:
                    self._told_learning.add(key)
                    log.info(
                        "anomaly_rule_learning",
                        rule=rule,
                        metric=metric,
                        labels=dict(obs.labels),
                        history_points=reading.history,
                        hint="too little history to tell what is usual yet: not evaluated",
                    )
                out.append(Observation(obs.labels, None, None))
                continue
            self._told_learning.discard(key)
            out.append(Observation(obs.labels, reading.anomalous, round(reading.score, 2)))
        return out


def usual_text(metric: str, reading: AnomalyScore | None) -> str:
    """ "latency_p95 4.1; usual at this hour 1.2-1.8 (+6.3 robust z)" for a notification (with
    the shape score when it, not the z, made the value anomalous)."""
    if reading is None or reading.low is None or reading.high is None or reading.z is None:
        return metric
    when = "lately" if reading.baseline is Baseline.TRAILING else "at this hour"
    if reading.baseline is Baseline.WEEKLY:
        when = "at this hour of the week"
    # A value can be anomalous by the shape of the last few minutes while inside the band:
    # say so, with the shape score that decided it.
    shape = ""
    if reading.shape > 0 and reading.shape >= reading.score:
        shape = f"; unusual pattern over the last minutes, shape score {reading.shape:.1f}"
    return (
        f"{metric} {reading.value:.3g}; usual {when} {reading.low:.3g}-{reading.high:.3g}"
        f" ({reading.z:+.1f} robust z{shape})"
    )
