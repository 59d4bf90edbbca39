"""Model-free similarity of a response to its reference answer (pure).

`string_similarity` is 1 minus LangChain's `string_distance` evaluator with its default
metric, normalised Jaro-Winkler (rapidfuzz, as LangChain calls it); `embedding_similarity` is
the cosine of two embeddings, what LangChain's `embedding_distance` evaluator takes 1 minus
by default. Both are 1 for equal texts and fall towards 0 as they differ.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from rapidfuzz.distance import JaroWinkler

if TYPE_CHECKING:
    from numpy.typing import NDArray


def string_similarity(response: str, reference: str) -> float:
    """1 - normalised Jaro-Winkler distance, in [0, 1]."""
    return float(JaroWinkler.normalized_similarity(response, reference))


def embedding_similarity(
    responses: NDArray[np.float32], references: NDArray[np.float32]
) -> NDArray[np.float64]:
    """Row-wise cosine similarity of two equally shaped matrices, clipped to [-1, 1]."""
    dots = np.einsum("ij,ij->i", responses.astype(np.float64), references.astype(np.float64))
    norms = np.linalg.norm(responses, axis=1) * np.linalg.norm(references, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.where(norms > 0, dots / np.where(norms > 0, norms, 1.0), 0.0)
    return np.clip(cosine, -1.0, 1.0)
