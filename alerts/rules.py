"""Alert rules: which series they may name, and how one evaluation turns into observations.

Pure computation over series points (the windows' own and the detectors' and the judge's, all
as `lookout.series.SeriesPoint`); the state machine (`state.step`) takes it from there.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from lookout.series import (
    ALL,
    DETECTOR_SERIES,
    ENGAGEMENT_SERIES,
    FEEDBACK_SERIES,
    JUDGE_SERIES,
    SERIES_LABELS,
    SERIES_NAMES,
    TOOL_SERIES,
    SeriesPoint,
)

RULE_SERIES: frozenset[str] = frozenset(
    (
        *SERIES_NAMES,
        *DETECTOR_SERIES,
        *JUDGE_SERIES,
        *FEEDBACK_SERIES,
        *ENGAGEMENT_SERIES,
        *TOOL_SERIES,
    )
)
RULE_LABELS: frozenset[str] = frozenset(SERIES_LABELS)
OPS: Mapping[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class SeriesSource(Protocol):
    """The series a rule evaluates: every point over the window of `window_s` ending at `now`
    (the daemon joins the windowed metrics' points and the detectors' and the judge's)."""

    def __call__(self, window_s: float, now: float, /) -> Iterable[SeriesPoint]: ...


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    metric: str
    threshold: float | None  # None for op anomaly, whose breach the anomaly scorer decides
    op: str = ">"
    where: Mapping[str, str] = field(default_factory=dict)
    min_samples: int = 1


@dataclass(frozen=True, slots=True)
class Observation:
    """One (rule, labels) at one evaluation: breached, not, or None for no data."""

    labels: tuple[tuple[str, str], ...]
    breached: bool | None
    value: float | None


def observe(rule: Rule, points: Iterable[SeriesPoint]) -> list[Observation]:
    """The rule over one window's series points (those of other metrics are passed over)."""
    if rule.metric in SERIES_NAMES:
        return _observe_window(rule, points)
    return _observe_labelled(rule, points)


def _observe_window(rule: Rule, points: Iterable[SeriesPoint]) -> list[Observation]:
    """A windowed series, labelled with its (app, model) scope.

    With `where`, the rule watches the scope it names (`model` defaults to all models); without
    it, each app separately, over all its models. A scope with fewer than `min_samples` records
    has no data, so one slow request in a quiet minute does not page.
    """
    app = rule.where.get("app")
    model = rule.where.get("model", ALL)
    observations = []
    for p in points:
        if p.metric != rule.metric:
            continue
        labels = dict(p.labels)
        scope_app, scope_model = labels.get("app", ALL), labels.get("model", ALL)
        if scope_model != model or (scope_app == ALL and app is None):
            continue
        if app is not None and scope_app != app:
            continue
        observations.append(_observation(rule, (("app", scope_app), ("model", scope_model)), p))
    if app is not None and not observations:
        # The watched scope has no records in the window at all.
        observations.append(Observation((("app", app), ("model", model)), None, None))
    return observations


def _observe_labelled(rule: Rule, points: Iterable[SeriesPoint]) -> list[Observation]:
    """Detector and judge series, filtered by `where` on the labels each series has (drift
    has `field`, judge_score has `criterion`; a `model` filter does not apply to them)."""
    observations = []
    for p in points:
        if p.metric != rule.metric:
            continue
        labels = dict(p.labels)
        if any(k in labels and labels[k] != v for k, v in rule.where.items()):
            continue
        observations.append(_observation(rule, p.labels, p))
    return observations


def _observation(
    rule: Rule, labels: tuple[tuple[str, str], ...], point: SeriesPoint
) -> Observation:
    if point.value is None or point.count < rule.min_samples:
        return Observation(labels, None, point.value)
    if rule.op not in OPS or rule.threshold is None:  # op anomaly: decided on the value later
        return Observation(labels, False, point.value)
    return Observation(labels, OPS[rule.op](point.value, rule.threshold), point.value)
