"""A labelled series value that is not one of the ingest windows' own: the detectors' and the
judge's, as alert rules and status read them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    metric: str  # drift_score, ood_rate, judge_pass_rate, judge_score, judge_agreement
    labels: tuple[tuple[str, str], ...]
    value: float | None  # None: no data in the window
    count: int  # how many observations the value rests on (a rule's min_samples)
