"""NAB's scoring, ported from the reference scorer (numenta/NAB nab/sweeper.py, MIT; the copy
in bench/data/nab/LICENSE.txt): sigmoid window scoring, the threshold sweep over the whole
corpus, and normalisation against the null and perfect detectors.

Same rules as the reference: the first 15% of each file (at most 750 points) is probation and
not scored; a point inside a label window scores by its position (earliest ~ +1 x tpWeight,
right edge 0), a window without a detection costs fnWeight, a detection outside windows costs
fpWeight x a sigmoid of its distance past the previous window (-1 with none before). The
threshold is the one that maximises the corpus' raw score; the normalised score is
100 x (raw - null) / (perfect - null) with perfect = windows x tpWeight.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

PROBATION_PERCENT = 0.15


@dataclass(frozen=True, slots=True)
class Point:
    score: float  # the detector's anomaly score in [0, 1]
    sweep: float  # what a detection here would add (weighted)
    window: str | None  # the label window's name, "probationary", or None


@dataclass(frozen=True, slots=True)
class Costs:
    tp: float
    fp: float
    fn: float


def scaled_sigmoid(position: float) -> float:
    """Reference `scaledSigmoid`: -1 left edge .. 0 right edge of a window, > 0 past it."""
    if position > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * position)) - 1.0


def probation_length(n: int) -> float:
    return min(math.floor(PROBATION_PERCENT * n), PROBATION_PERCENT * 5000)


def sweep_points(
    name: str,
    timestamps: list[datetime],
    scores: list[float],
    windows: list[tuple[datetime, datetime]],
    costs: Costs,
) -> list[Point]:
    """Reference `calcSweepScore`: each row's weighted score were it a detection."""
    max_tp = scaled_sigmoid(-1.0)
    probation = probation_length(len(timestamps))
    index = {t: i for i, t in enumerate(timestamps)}
    pending = list(windows)
    out: list[Point] = []
    current: tuple[datetime, datetime] | None = None
    cur_name: str | None = None
    cur_right = cur_width = 0.0
    prev_right: int | None = None
    prev_width = 0.0
    for i, (t, s) in enumerate(zip(timestamps, scores, strict=True)):
        if pending and t == pending[0][0]:
            current = pending.pop(0)
            cur_name = f"{name}|{current[0]}"
            cur_right = index[current[1]]
            cur_width = float(cur_right - index[current[0]] + 1)
        if current is not None:
            weighted = scaled_sigmoid(-(cur_right - i + 1) / cur_width) * costs.tp / max_tp
        else:
            if prev_right is None:
                unweighted = -1.0
            else:
                unweighted = scaled_sigmoid(abs(prev_right - i) / (prev_width - 1))
            weighted = unweighted * costs.fp
        window = cur_name if i >= probation else "probationary"
        out.append(Point(s, weighted, window))
        if current is not None and t == current[1]:
            prev_right, prev_width = i, cur_width
            current, cur_name = None, None
    return out


def score_by_threshold(points: list[Point], costs: Costs) -> list[tuple[float, float]]:
    """Reference `calcScoreByThreshold`: (threshold, raw score) from high to low threshold."""
    scorable = sorted(
        (p for p in points if p.window != "probationary"), key=lambda p: p.score, reverse=True
    )
    parts: dict[str | None, float] = {"fp": 0.0}
    for p in scorable:
        if p.window is not None:
            parts[p.window] = -costs.fn
    total = sum(parts.values())
    out: list[tuple[float, float]] = []
    threshold = 1.1
    for p in scorable:
        if p.score != threshold:
            out.append((threshold, total))
            threshold = p.score
        if p.window is None:
            parts["fp"] += p.sweep
            total += p.sweep
        else:
            before = parts[p.window]
            parts[p.window] = max(before, p.sweep)
            total += parts[p.window] - before
    out.append((threshold, total))
    return out


def score_at(points: list[Point], costs: Costs, threshold: float) -> float:
    """The raw score of one file's points with detections at score >= threshold."""
    parts: dict[str, float] = {}
    fp = 0.0
    for p in points:
        if p.window == "probationary":
            continue
        if p.window is not None:
            parts.setdefault(p.window, -costs.fn)
            if p.score >= threshold:
                parts[p.window] = max(parts[p.window], p.sweep)
        elif p.score >= threshold:
            fp += p.sweep
    return fp + sum(parts.values())


def score_detections(points: list[Point], costs: Costs, detected: list[bool]) -> float:
    """The raw score of one file's points with detections where `detected` says."""
    return score_at(
        [
            Point(1.0 if d else 0.0, p.sweep, p.window)
            for p, d in zip(points, detected, strict=True)
        ],
        costs,
        0.5,
    )


def normalised(raw: float, null: float, windows: int, costs: Costs) -> float:
    perfect = windows * costs.tp
    return 100.0 * (raw - null) / (perfect - null)
