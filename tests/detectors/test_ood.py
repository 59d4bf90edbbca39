"""k-NN OOD scores on real text (CLINC150 from tests/data) with the default embedder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from numpy.typing import NDArray

from lookout.detectors.embedders import HashingEmbedder, StaticEmbedder
from lookout.detectors.errors import NotFitted
from lookout.detectors.ood import KnnOod
from tests.conftest import CLINC150


@pytest.fixture(scope="module")
def clinc() -> dict[str, list[str]]:
    rng = np.random.default_rng(0)
    rows = [json.loads(line) for line in CLINC150.open(encoding="utf-8")]
    pick = {
        "reference": [r["text"] for r in rows if r["split"] == "train" and not r["is_oos"]],
        "in_scope": [r["text"] for r in rows if r["split"] == "test" and not r["is_oos"]],
        "out_of_scope": [r["text"] for r in rows if r["split"] == "test" and r["is_oos"]],
    }
    return {
        k: [v[i] for i in rng.permutation(len(v))[:n]]
        for (k, v), n in zip(pick.items(), (3000, 400, 400), strict=True)
    }


def auroc(negatives: NDArray[np.float32], positives: NDArray[np.float32]) -> float:
    """P(a positive scores above a negative), ties counted half."""
    greater = (positives[:, None] > negatives[None, :]).mean()
    ties = (positives[:, None] == negatives[None, :]).mean()
    return float(greater + ties / 2)


def test_out_of_scope_ranks_above_in_scope(clinc: dict[str, list[str]]) -> None:
    embedder = StaticEmbedder()
    detector = KnnOod(k=5, fpr=0.05)
    detector.fit(embedder.embed(clinc["reference"]))
    inside = detector.score(embedder.embed(clinc["in_scope"]))
    outside = detector.score(embedder.embed(clinc["out_of_scope"]))
    assert auroc(inside.scores, outside.scores) > 0.9
    # Calibrated on the reference: about fpr of in-scope records are flagged.
    assert 0.02 <= inside.flagged.mean() <= 0.12
    assert outside.flagged.mean() > 3 * inside.flagged.mean()


def test_the_hashing_embedder_works_without_a_model_file(clinc: dict[str, list[str]]) -> None:
    embedder = HashingEmbedder(512)
    detector = KnnOod(k=1, fpr=0.05)
    detector.fit(embedder.embed(clinc["reference"]))
    inside = detector.score(embedder.embed(clinc["in_scope"])).scores
    outside = detector.score(embedder.embed(clinc["out_of_scope"])).scores
    assert auroc(inside, outside) > 0.8


def test_embeddings_are_normalised_rows(clinc: dict[str, list[str]]) -> None:
    for embedder in (StaticEmbedder(), HashingEmbedder(256)):
        x = embedder.embed([*clinc["in_scope"][:5], ""])
        assert x.shape == (6, embedder.dim) and x.dtype == np.float32
        assert np.allclose(np.linalg.norm(x[:5], axis=1), 1.0, atol=1e-5)
        assert embedder.embed([]).shape == (0, embedder.dim)


def test_save_and_restore_give_identical_scores(clinc: dict[str, list[str]]) -> None:
    embedder = StaticEmbedder()
    detector = KnnOod(k=5, fpr=0.01)
    detector.fit(embedder.embed(clinc["reference"][:500]))
    batch = embedder.embed(clinc["out_of_scope"][:50])
    restored = KnnOod.from_state(detector.state())
    first, again = detector.score(batch), restored.score(batch)
    assert np.array_equal(first.scores, again.scores) and first.threshold == again.threshold
    with pytest.raises(NotFitted):
        KnnOod().score(batch)
