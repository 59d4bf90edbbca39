"""Both detectors fitted on one reference, and their states as one flat mapping of arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lookout.detectors.arrays import States
from lookout.detectors.drift import MmdDrift
from lookout.detectors.ood import KnnOod


@dataclass(frozen=True, slots=True)
class DetectorParams:
    drift_window: int = 200
    drift_ert: float = 10_000
    ood_fpr: float = 0.01
    ood_k: int = 5
    seed: int = 0
    # Drift's cost per update grows with its reference: beyond this, a random subset is used
    # (the OOD scorer keeps every embedding).
    drift_max_reference: int = 4000

    def min_reference(self) -> int:
        """Embeddings a reference needs for both detectors."""
        return 4 * self.drift_window


@dataclass(slots=True)
class FittedReference:
    drift: MmdDrift
    ood: KnnOod

    def states(self) -> States:
        return {
            **{f"drift.{k}": v for k, v in self.drift.state().items()},
            **{f"ood.{k}": v for k, v in self.ood.state().items()},
        }

    @classmethod
    def from_states(cls, states: States) -> FittedReference:
        def part(prefix: str) -> States:
            return {k.removeprefix(prefix): v for k, v in states.items() if k.startswith(prefix)}

        return cls(MmdDrift.from_state(part("drift.")), KnnOod.from_state(part("ood.")))


def fit_reference(embeddings: NDArray[np.float32], params: DetectorParams) -> FittedReference:
    """Fit and calibrate both detectors (seconds of CPU: run it off the event loop)."""
    drift = MmdDrift(window=params.drift_window, ert=params.drift_ert, seed=params.seed)
    subset = embeddings
    if len(embeddings) > params.drift_max_reference:
        rng = np.random.default_rng(params.seed)
        subset = embeddings[rng.choice(len(embeddings), params.drift_max_reference, replace=False)]
    drift.fit(subset)
    ood = KnnOod(k=params.ood_k, fpr=params.ood_fpr)
    ood.fit(embeddings)
    return FittedReference(drift, ood)
