"""Scoring one batch of embeddings against a track's fitted reference, as a pure function:
the detection thread calls it and then applies the result to the track, so what a batch does
to the detectors' state can be tested (and reasoned about) apart from threads and queues."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lookout.detectors.arrays import F32
    from lookout.detectors.drift import DriftExplanation, DriftResult, DriftWindow
    from lookout.detectors.ood import OodResult
    from lookout.detectors.reference import FittedReference


@dataclass(frozen=True, slots=True)
class BatchScores:
    ood: OodResult
    window: DriftWindow  # a new window: the one given, slid over the batch
    drift: DriftResult  # of the new window
    explanation: DriftExplanation | None  # set when this batch turned the window to drift


def score_batch(
    fitted: FittedReference,
    window: DriftWindow,
    previous: DriftResult | None,
    embeddings: F32,
) -> BatchScores:
    """OOD scores of `embeddings` and the drift of `window` once they join it. Changes
    nothing it is given: `window` is copied before the batch slides it (a few hundred kB,
    small beside embedding the batch)."""
    ood = fitted.ood.score(embeddings)
    after = window.copy()
    after.add(embeddings)
    drift = fitted.drift.score(after)
    newly_drifted = drift.drifted and not (previous is not None and previous.drifted)
    explanation = fitted.drift.explain(after) if newly_drifted else None
    return BatchScores(ood, after, drift, explanation)
