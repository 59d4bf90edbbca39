"""Anomaly scores for one numeric series: how far a value is from the series' learned normal.

A streaming detector, one per series, fed one (time, value) at a time in time order. Its
normal is a robust level (median) and spread (inter-quartile range / 1.349, a standard
deviation for Gaussian data) from one of three baselines, chosen online by which predicts
the series best:

- a trailing baseline: the last `trailing_points` values;
- a daily and a weekly seasonal profile: per time-of-period bucket, a few values from each
  of the last periods (`samples_per_period`, up to `values_per_bucket`); usable once
  `min_periods` periods have been seen and, with `seasonality: auto`, once the profile's mean
  absolute error predicting by its median beats the trailing baseline's by `seasonal_gain`.

The score is a robust z: (value - level) / spread, signed, read along the rule's direction,
or, where higher, the shape score: how unusual the last few z's are together, a k-NN distance
to the recent windows of z's (detectors/shape.py; weighted, gated and capped by the config).
The threshold comes from a target rate of false alarms per week through a Gaussian tail on
the independent decisions a week holds (`threshold_for`). Real series have fatter tails, so
with `tail_rate` the threshold is also at least the z that the series' own last
`trailing_points` learned values exceeded at that rate (their (1 - tail_rate) quantile):
the rate is then what the series does, not what a Gaussian would (docs/benchmarks.md). A
score joins that tail `tail_delay_points` after it was learned, so an incident is judged
against the tail from before it for that long, then becomes part of what the series does.

`score` never changes state; `update` scores and then learns. Memory is bounded by the
configuration (buckets x values per bucket + 2 x trailing values + the shape's memory);
`save`/`restore` round-trip
the state as plain JSON-able data. Method and measurement: docs/detectors.md, docs/benchmarks.md.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

from lookout.detectors.robust import SortedWindow, robust_spread
from lookout.detectors.shape import ShapeScorer

DAY_S = 86_400.0
WEEK_S = 7 * DAY_S


class Direction(enum.StrEnum):
    UP = "up"
    DOWN = "down"
    BOTH = "both"


class Seasonality(enum.StrEnum):
    AUTO = "auto"
    NONE = "none"
    DAILY = "daily"
    WEEKLY = "weekly"


class Baseline(enum.StrEnum):
    """Which normal a score was measured against."""

    LEARNING = "learning"  # too little history: no score
    TRAILING = "trailing"
    DAILY = "daily"
    WEEKLY = "weekly"


# The shape score's window for an anomaly rule (`shape: true`, the rule's default): +2.4 NAB
# standard points at ~2.3x the detector's CPU per point, 34 us against 15 (docs/benchmarks.md).
# The detector's own default stays off: `AnomalyConfig()` alone is the robust z.
SHAPE_POINTS = 6


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    direction: Direction = Direction.BOTH
    seasonality: Seasonality = Seasonality.AUTO
    threshold_z: float = 4.0
    trailing_points: int = 2048  # ~34 h of minutes: chosen on NAB (docs/benchmarks.md)
    min_points: int = 30  # fewer: LEARNING, never anomalous
    buckets_per_day: int = 24
    # A bucket keeps `samples_per_period` values from each period (one per equal slice of
    # the bucket, so minutes 0, 15, 30, 45 of an hour) and the last `values_per_bucket`.
    samples_per_period: int = 4
    values_per_bucket: int = 24
    min_periods: int = 3
    seasonal_gain: float = 0.9  # a profile is used once its error is below this x trailing's
    error_halflife_points: float = 200.0
    # The spread never falls below this fraction of |level| (a flat series is not infinitely
    # sensitive) nor below `min_spread` in the series' units.
    min_relative_spread: float = 0.01
    min_spread: float = 1e-9
    # > 0: the threshold is at least the (1 - tail_rate) quantile of the scores of the last
    # `trailing_points` learned values (the fraction of them a rule may find anomalous).
    tail_rate: float = 0.0
    tail_delay_points: int = 60  # an hour of minutes
    # The shape score (detectors/shape.py): the last `shape_points` residuals against the
    # windows of the last `shape_memory` points, `shape_neighbours` nearest; it competes with
    # the z at `shape_weight` x its own robust z, for a value at least `shape_min_z` off the
    # level on the rule's side, and up to `shape_cap` x `threshold_z` (so one incident's
    # shape cannot lift the series' tail far above its z's). 0 points: off. Chosen on NAB
    # (docs/benchmarks.md).
    shape_points: int = 0  # off by default: SHAPE_POINTS when a rule says `shape: true`
    shape_neighbours: int = 3
    shape_memory: int = 1000
    shape_weight: float = 0.5
    shape_min_z: float = 1.0
    shape_cap: float = 3.0


@dataclass(frozen=True, slots=True)
class AnomalyScore:
    """One value against the normal: the band is level +- threshold_z x spread."""

    value: float
    baseline: Baseline
    level: float | None
    spread: float | None
    z: float | None  # signed robust z; None while learning
    score: float  # z read along the direction (up: z, down: -z, both: |z|), 0 while learning
    # The band: level +- threshold x spread; threshold is `threshold_z`, or more where the
    # series' own tail (`tail_rate`) is fatter.
    low: float | None
    high: float | None
    anomalous: bool
    history: int = 0  # values learned so far (LEARNING until `min_points`)
    threshold: float | None = None  # the z beyond which the value is anomalous
    # The shape score x its weight (0 while it has too little history): how unusual the last
    # few residuals are together; `score` is the larger of it and the z read along the
    # direction, so a value inside the band can be anomalous by its shape.
    shape: float = 0.0


def threshold_for(false_alarms_per_week: float, interval_s: float, direction: Direction) -> float:
    """The z whose Gaussian tail gives `false_alarms_per_week` over a week of decisions made
    every `interval_s` (a rule's `for:` and the series' autocorrelation make real alarms
    rarer still; the bench measures it on NAB's anomaly-free series)."""
    decisions = max(1.0, WEEK_S / interval_s)
    tail = min(0.5, max(false_alarms_per_week, 1e-6) / decisions)
    if direction is Direction.BOTH:
        tail /= 2
    return NormalDist().inv_cdf(1.0 - tail)


@dataclass(slots=True)
class _Profile:
    """A seasonal profile: per bucket of the period, the last values seen there."""

    period_s: float
    buckets: int
    size: int
    per_period: int = 4
    cells: list[SortedWindow] = field(default_factory=list)
    filled: list[int] = field(default_factory=list)  # per bucket: the last (period, slot) kept
    first_t: float | None = None
    error: float | None = None  # exponentially weighted mean absolute error of its median

    def __post_init__(self) -> None:
        if not self.cells:
            self.cells = [SortedWindow(self.size) for _ in range(self.buckets)]
        if not self.filled:
            self.filled = [-1] * self.buckets

    def index(self, t: float) -> int:
        return int((t % self.period_s) / self.period_s * self.buckets) % self.buckets

    def cell(self, t: float) -> SortedWindow:
        return self.cells[self.index(t)]

    def learn(self, t: float, value: float) -> None:
        """Keep `value` if it is the first of its slice of the bucket in this period."""
        i = self.index(t)
        bucket_s = self.period_s / self.buckets
        slot = int((t % bucket_s) / bucket_s * self.per_period)
        key = int(t // self.period_s) * self.per_period + slot
        if key > self.filled[i]:
            self.filled[i] = key
            self.cells[i].add(value)

    def periods(self, t: float) -> float:
        return 0.0 if self.first_t is None else (t - self.first_t) / self.period_s


class AnomalyDetector:
    """The streaming detector of one series (see the module docstring)."""

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = c = config or AnomalyConfig()
        self._trailing = SortedWindow(c.trailing_points)
        self._tail = SortedWindow(c.trailing_points)  # the learned values' scores
        self._tail_pending: deque[float] = deque()  # ... the last `tail_delay_points` of them
        self._trailing_error: float | None = None
        self._profiles: dict[Baseline, _Profile] = {}
        if c.seasonality in (Seasonality.AUTO, Seasonality.DAILY):
            self._profiles[Baseline.DAILY] = _Profile(
                DAY_S, c.buckets_per_day, c.values_per_bucket, c.samples_per_period
            )
        if c.seasonality in (Seasonality.AUTO, Seasonality.WEEKLY):
            self._profiles[Baseline.WEEKLY] = _Profile(
                WEEK_S, 7 * c.buckets_per_day, c.values_per_bucket, c.samples_per_period
            )
        self._alpha = 1.0 - 0.5 ** (1.0 / c.error_halflife_points)
        self._shape = (
            ShapeScorer(c.shape_points, c.shape_neighbours, c.shape_memory, c.trailing_points)
            if c.shape_points > 0
            else None
        )
        self.points = 0

    # -- the normal ---------------------------------------------------------------------

    def _trailing_normal(self) -> tuple[float, float] | None:
        if len(self._trailing) < self.config.min_points:
            return None
        return self._trailing.quantile(0.5), robust_spread(self._trailing)

    def _profile_normal(self, profile: _Profile, t: float) -> tuple[float, float] | None:
        cell = profile.cell(t)
        if profile.periods(t) < self.config.min_periods or len(cell) < self.config.min_periods:
            return None
        return cell.quantile(0.5), robust_spread(cell)

    def normal(self, t: float) -> tuple[Baseline, float, float] | None:
        """The baseline in use at time `t`, its level and its (floored) spread."""
        trailing = self._trailing_normal()
        if trailing is None:
            return None
        best, (level, spread), best_error = Baseline.TRAILING, trailing, self._trailing_error
        forced = self.config.seasonality is not Seasonality.AUTO
        for name, profile in self._profiles.items():
            found = self._profile_normal(profile, t)
            if found is None or profile.error is None:
                continue
            beats = best_error is None or profile.error < self.config.seasonal_gain * best_error
            if forced or beats:
                best, (level, spread), best_error = name, found, profile.error
        # The in-bucket spread rests on few values: never narrower than half the trailing one.
        if best is not Baseline.TRAILING:
            spread = max(spread, 0.5 * trailing[1])
        floor = max(self.config.min_spread, self.config.min_relative_spread * abs(level))
        return best, level, max(spread, floor)

    # -- scoring and learning -------------------------------------------------------------

    def score(self, t: float, value: float) -> AnomalyScore:
        """`value` at time `t` against the normal learned so far (changes nothing)."""
        return self._read(t, value, learn=False)

    def _read(self, t: float, value: float, *, learn: bool) -> AnomalyScore:
        """The score; with `learn`, the shape scorer also learns the value's residual (the
        rest is learned by `update`)."""
        normal = self.normal(t)
        if normal is None:
            if learn and self._shape is not None:
                self._shape.update(0.0)
            return self._learning(value)
        baseline, level, spread = normal
        z = (value - level) / spread
        direction = self.config.direction
        read = z if direction is Direction.UP else -z if direction is Direction.DOWN else abs(z)
        shape = 0.0
        if self._shape is not None and (learn or read >= 0):
            raw = self._shape.update(z) if learn else self._shape.score(z)
            c = self.config
            if read >= c.shape_min_z:  # a value off the level, on the rule's side
                shape = min(max(0.0, c.shape_weight * raw), c.shape_cap * c.threshold_z)
        score = max(read, shape)
        k = self.threshold()
        return AnomalyScore(
            value,
            baseline,
            level,
            spread,
            z,
            score,
            level - k * spread,
            level + k * spread,
            score > k,
            self.points,
            k,
            shape,
        )

    def threshold(self) -> float:
        """The z beyond which a value is anomalous now: `threshold_z`, or the series' own
        (1 - tail_rate) quantile of recent scores where that is higher."""
        k = self.config.threshold_z
        if self.config.tail_rate > 0 and len(self._tail) >= self.config.min_points:
            k = max(k, self._tail.quantile(1.0 - self.config.tail_rate))
        return k

    def _learning(self, value: float) -> AnomalyScore:
        return AnomalyScore(
            value, Baseline.LEARNING, None, None, None, 0.0, None, None, False, self.points
        )

    def update(self, t: float, value: float) -> AnomalyScore:
        """Score `value` at `t`, then learn it. Non-finite values are scored as nothing."""
        if not math.isfinite(value):
            return self._learning(value)
        result = self._read(t, value, learn=True)
        if result.baseline is not Baseline.LEARNING:
            self._learn_tail(result.score)
        self._learn_errors(t, value)
        self._trailing.add(value)
        for profile in self._profiles.values():
            if profile.first_t is None:
                profile.first_t = t
            profile.learn(t, value)
        self.points += 1
        return result

    def _learn_tail(self, score: float) -> None:
        self._tail_pending.append(score)
        if len(self._tail_pending) > self.config.tail_delay_points:
            self._tail.add(self._tail_pending.popleft())

    def _learn_errors(self, t: float, value: float) -> None:
        """Each baseline's running mean absolute error predicting `value` by its median."""
        a = self._alpha
        if len(self._trailing) >= self.config.min_points:
            err = abs(value - self._trailing.quantile(0.5))
            e = self._trailing_error
            self._trailing_error = err if e is None else e + a * (err - e)
        for profile in self._profiles.values():
            cell = profile.cell(t)
            if len(cell) >= 1 and profile.periods(t) >= 1:
                err = abs(value - cell.quantile(0.5))
                profile.error = (
                    err if profile.error is None else profile.error + a * (err - profile.error)
                )

    # -- state ------------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        """The learned state as JSON-able data (restore with `restore`)."""
        return {
            "version": 3,
            "points": self.points,
            "trailing": list(self._trailing.order),
            "tail": list(self._tail.order) + list(self._tail_pending),
            "trailing_error": self._trailing_error,
            "profiles": {
                name.value: {
                    "first_t": p.first_t,
                    "error": p.error,
                    "cells": [list(c.order) for c in p.cells],
                    "filled": list(p.filled),
                }
                for name, p in self._profiles.items()
            },
            "shape": None if self._shape is None else self._shape.save(),
        }

    @classmethod
    def restore(cls, config: AnomalyConfig, state: dict[str, Any]) -> AnomalyDetector:
        """A detector with `config` and the saved `state` (a profile the config no longer
        has is dropped; one whose bucket count changed starts afresh). A version-1 state has
        no scores' tail: it refills as values are learned (the threshold is `threshold_z`
        meanwhile); one before version 3 has no shape state: the shape score starts afresh
        (0 until it has history again)."""
        detector = cls(config)
        detector.points = int(state.get("points", 0))
        for score in state.get("tail", []):
            detector._learn_tail(float(score))
        detector._trailing = SortedWindow(config.trailing_points, list(state.get("trailing", [])))
        detector._trailing_error = state.get("trailing_error")
        if detector._shape is not None and state.get("shape"):
            detector._shape.restore(state["shape"])
        for name, saved in state.get("profiles", {}).items():
            profile = detector._profiles.get(Baseline(name))
            if profile is None or len(saved["cells"]) != profile.buckets:
                continue
            profile.first_t = saved["first_t"]
            profile.error = saved["error"]
            profile.cells = [SortedWindow(profile.size, list(v)) for v in saved["cells"]]
            profile.filled = [int(k) for k in saved["filled"]]
        return detector
