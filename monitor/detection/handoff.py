"""What passes between the event loop and the detection thread: texts queued for embedding,
their scores, and requests to fit a reference from an app's first texts."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lookout.detectors.arrays import F32
    from lookout.monitor.ingest.records import Record
    from lookout.monitor.storage.drift_samples import DriftSample


@dataclass(frozen=True, slots=True)
class QueuedText:
    app: str
    field: str
    text: str
    at: float
    record: Record
    stored_id: str | None  # the id the store keeps the record under, if it was sampled
    cost: float


@dataclass(frozen=True, slots=True)
class ScoredText:
    item: QueuedText
    ood_score: float
    flagged: bool  # out of distribution
    threshold: float  # the OOD threshold the score was held against


@dataclass(frozen=True, slots=True)
class FitRequest:
    """An app's first texts, enough to fit its reference (in a child process, off the
    detection thread)."""

    app: str
    field: str
    embeddings: F32
    texts: list[str]


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What one batch on the detection thread leaves for the loop to do."""

    scored: list[ScoredText]
    fits: list[FitRequest]
    samples: list[DriftSample] = field(default_factory=list)  # to share with the cluster
