"""Alert rules: which series they may name, and how one evaluation turns into observations.

Pure computation over the windowed series; the state machine (`state.step`) takes it from there.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lookout.monitor.metrics.windows import ALL, SERIES_NAMES, WindowStats

if TYPE_CHECKING:
    from lookout.series import SeriesPoint

# The series the detectors and the judge add, beside the ingest windows' own.
RULE_SERIES: frozenset[str] = frozenset(SERIES_NAMES) | {
    "drift_score",
    "drift_statistic",
    "drift_threshold",
    "ood_rate",
    "judge_pass_rate",
    "judge_score",
    "judge_agreement",
}
RULE_LABELS: frozenset[str] = frozenset({"app", "model", "field", "criterion"})
OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    metric: str
    threshold: float
    op: str = ">"
    where: Mapping[str, str] = field(default_factory=dict)
    min_samples: int = 1


@dataclass(frozen=True, slots=True)
class Observation:
    """One (rule, labels) at one evaluation: breached, not, or None for no data."""

    labels: tuple[tuple[str, str], ...]
    breached: bool | None
    value: float | None


def observe(
    rule: Rule, stats: Iterable[WindowStats], extra: Iterable[SeriesPoint] = ()
) -> list[Observation]:
    """The rule over one window's series.

    With `where`, the rule watches the scope it names (`model` defaults to all models); without
    it, each app separately, over all its models. A scope with fewer than `min_samples` records
    has no data, so one slow request in a quiet minute does not page.
    """
    compare = OPS[rule.op]
    if rule.metric not in SERIES_NAMES:
        return _observe_extra(rule, extra)
    app = rule.where.get("app")
    model = rule.where.get("model", ALL)
    observations = []
    for s in stats:
        if s.model != model or (s.app == ALL and app is None):
            continue
        if app is not None and s.app != app:
            continue
        value = s.series().get(rule.metric)
        labels = (("app", s.app), ("model", s.model))
        if value is None or s.count < rule.min_samples:
            observations.append(Observation(labels, None, value))
        else:
            observations.append(Observation(labels, compare(value, rule.threshold), value))
    if app is not None and not observations:
        # The watched scope has no records in the window at all.
        observations.append(Observation((("app", app), ("model", model)), None, None))
    return observations


def _observe_extra(rule: Rule, points: Iterable[SeriesPoint]) -> list[Observation]:
    """Detector and judge series, filtered by `where` on the labels each series has (drift
    has `field`, judge_score has `criterion`; a `model` filter does not apply to them)."""
    compare = OPS[rule.op]
    observations = []
    for p in points:
        if p.metric != rule.metric:
            continue
        labels = dict(p.labels)
        if any(k in labels and labels[k] != v for k, v in rule.where.items()):
            continue
        if p.value is None or p.count < rule.min_samples:
            observations.append(Observation(p.labels, None, p.value))
        else:
            observations.append(Observation(p.labels, compare(p.value, rule.threshold), p.value))
    return observations
