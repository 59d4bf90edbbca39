"""Array aliases and the row normalisation the detectors and embedders share."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

F32 = NDArray[np.float32]
States = dict[str, NDArray[np.generic]]  # a detector's state as a flat mapping of arrays


def normalise_rows(x: NDArray[Any]) -> F32:
    """Each row scaled to unit L2 norm (all-zero rows stay zero), as float32."""
    rows: F32 = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    out: F32 = (rows / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)
    return out
