"""Out-of-distribution scores: k-nearest-neighbour cosine distance to a reference set.

fit(reference) -> score(batch) -> OodResult. The threshold is calibrated on the reference
itself, leave-one-out: each reference embedding is scored against all the others, and the
threshold is the (1 - fpr) quantile of those scores, so a share `fpr` of records like the
reference is flagged. Embeddings are centred on the reference mean before normalising, which
removes the common direction sentence encoders share and ranks outliers better (bench/ood.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lookout.detectors.arrays import F32, normalise_rows
from lookout.detectors.errors import DetectorError, NotFitted

_CHUNK = 1024  # rows scored per matrix product: bounds the temporary to CHUNK x reference


@dataclass(frozen=True, slots=True)
class OodResult:
    scores: F32  # mean cosine distance to the k nearest reference embeddings
    threshold: float
    flagged: NDArray[np.bool_]


class KnnOod:
    def __init__(self, *, k: int = 10, fpr: float = 0.01, center: bool = True) -> None:
        if k < 1:
            raise DetectorError("k must be at least 1")
        if not 0.0 < fpr < 1.0:
            raise DetectorError("fpr must lie between 0 and 1")
        self.k = k
        self.fpr = fpr
        self.center = center
        self._mean: F32 | None = None
        self._ref: F32 | None = None
        self.threshold = float("nan")

    @property
    def fitted(self) -> bool:
        return self._ref is not None

    def _prepare(self, x: F32) -> F32:
        assert self._mean is not None
        x = np.asarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._mean.shape[0]:
            raise DetectorError(f"expected embeddings of dimension {self._mean.shape[0]}")
        return normalise_rows(x - self._mean) if self.center else normalise_rows(x)

    def fit(self, reference: F32) -> None:
        reference = np.asarray(reference, dtype=np.float32)
        if reference.ndim != 2 or len(reference) <= self.k + 1:
            raise DetectorError(f"a reference needs more than {self.k + 1} embeddings")
        dim = reference.shape[1]
        self._mean = (
            reference.mean(axis=0).astype(np.float32) if self.center else np.zeros(dim, np.float32)
        )
        self._ref = self._prepare(reference)
        # Leave-one-out: the k nearest among the others (the nearest of all is the point itself).
        loo = self._knn_distance(self._ref, self.k, skip_self=True)
        self.threshold = float(np.quantile(loo, 1.0 - self.fpr))

    def _knn_distance(self, x: F32, k: int, *, skip_self: bool = False) -> F32:
        assert self._ref is not None
        out = np.empty(len(x), dtype=np.float32)
        for start in range(0, len(x), _CHUNK):
            sims = x[start : start + _CHUNK] @ self._ref.T
            if skip_self:  # x is the reference: a point is not its own neighbour
                rows = np.arange(len(sims))
                sims[rows, rows + start] = -np.inf
            top = np.partition(sims, -k, axis=1)[:, -k:]
            out[start : start + _CHUNK] = 1.0 - top.mean(axis=1)
        return out

    def score(self, batch: F32) -> OodResult:
        if self._ref is None:
            raise NotFitted("the OOD detector has no reference yet")
        scores = self._knn_distance(self._prepare(batch), min(self.k, len(self._ref)))
        return OodResult(scores, self.threshold, scores > self.threshold)

    def state(self) -> dict[str, NDArray[np.generic]]:
        """Arrays that restore this detector exactly (no recalibration)."""
        if self._ref is None or self._mean is None:
            raise NotFitted("nothing to save before fit")
        params = np.array([self.k, self.fpr, float(self.center), self.threshold], np.float64)
        return {"ref": self._ref, "mean": self._mean, "params": params}

    @classmethod
    def from_state(cls, state: dict[str, NDArray[np.generic]]) -> KnnOod:
        k, fpr, center, threshold = (float(v) for v in state["params"])
        detector = cls(k=int(k), fpr=fpr, center=bool(center))
        detector._ref = np.asarray(state["ref"], dtype=np.float32)
        detector._mean = np.asarray(state["mean"], dtype=np.float32)
        detector.threshold = threshold
        return detector
