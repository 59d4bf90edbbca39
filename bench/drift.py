"""Drift detectors side by side: lookout's MmdDrift and alibi-detect's MMDDriftOnline (pytorch).

    pip install -e '.[bench]'   # alibi-detect, torch==2.13.0
    python bench/drift.py [--runs 300] [--alibi-runs 30]
    python bench/drift.py --no-alibi --stream clinc150 --embedder onnx-int8   # other embedders:
        static (default), onnx-int8, onnx-fp32 (with --onnx-fp32 DIR), torch (MiniLM layers 2)

Streams: synthetic (384-d Gaussian, +0.3 in 20 dims from step 250) and real (CLINC150 prompts
embedded with the default static embedder: some domains as reference, then others). For each
detector: calibration CPU, CPU per update, median detection delay after the change, and the
no-change run length to the first alarm (the measured ERT; false alarms per 1,000 steps is
1000 / ERT). One thread each (OMP_NUM_THREADS=1), so CPU figures compare one core to one core.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from clinc import load
from numpy.typing import NDArray

from lookout.detectors.drift import MmdDrift
from lookout.detectors.embedders import Embedder, SentenceTransformerEmbedder, StaticEmbedder
from lookout.detectors.onnx_embedder import OnnxEmbedder

F32 = NDArray[np.float32]
ERT, WINDOW, SHIFT_AT = 1000, 50, 250
TARGET_ERT = {"lookout": float(ERT)}  # --target-ert: lookout calibrated to another ERT
EMBEDDERS = ("static", "onnx-int8", "onnx-fp32", "torch")


def embedder(kind: str, fp32: str | None) -> Embedder:
    if kind == "onnx-int8":
        return OnnxEmbedder(precision="int8", threads=1)
    if kind == "onnx-fp32":
        return OnnxEmbedder(Path(fp32 or "."), precision="fp32", threads=1)
    if kind == "torch":
        return SentenceTransformerEmbedder("all-MiniLM-L6-v2", layers=2, threads=1)
    return StaticEmbedder()


class Ours:
    name = "lookout MmdDrift"

    def __init__(self, ref: F32) -> None:
        ert = TARGET_ERT["lookout"]
        self.det = MmdDrift(window=WINDOW, ert=ert, n_bootstraps=int(2.5 * ert), seed=0)
        self.det.fit(ref)

    def new_run(self) -> Callable[[F32], bool]:
        window = self.det.new_window()

        def step(x: F32) -> bool:
            window.add(x[None, :])
            return self.det.score(window).drifted

        return step


class Alibi:
    name = "alibi-detect MMDDriftOnline (pytorch)"

    def __init__(self, ref: F32) -> None:
        import torch
        from alibi_detect.cd import MMDDriftOnline

        torch.set_num_threads(1)
        self.det = MMDDriftOnline(
            ref, ert=ERT, window_size=WINDOW, backend="pytorch", n_bootstraps=2500, verbose=False
        )

    def new_run(self) -> Callable[[F32], bool]:
        self.det.reset_state()

        def step(x: F32) -> bool:
            return bool(self.det.predict(x, return_test_stat=False)["data"]["is_drift"])

        return step


def run_length(step: Callable[[F32], bool], stream: F32) -> int:
    for t, x in enumerate(stream):
        if step(x):
            return t + 1
    return len(stream)


def measure(
    kind: Any, ref: F32, streams: Callable[[int, bool], F32], runs: int, first_seed: int = 0
) -> dict[str, Any]:
    started = time.process_time()
    detector = kind(ref)
    calibration_s = time.process_time() - started
    updates, cpu = 0, 0.0
    lengths, delays = [], []
    for seed in range(first_seed, first_seed + runs):
        stream = streams(seed, False)
        started = time.process_time()
        n = run_length(detector.new_run(), stream)
        cpu += time.process_time() - started
        updates += n
        lengths.append(n - WINDOW + 1)  # steps after the window first filled
    for seed in range(first_seed, first_seed + runs):
        n = run_length(detector.new_run(), streams(10_000 + seed, True))
        delays.append(n - SHIFT_AT if n > SHIFT_AT else None)
    return {
        "detector": detector.name,
        "calibration_cpu_s": [calibration_s],
        "cpu_s": cpu,
        "updates": updates,
        "lengths": lengths,
        "delays": delays,
    }


def summary(parts: list[dict[str, Any]]) -> dict[str, Any]:
    lengths = [n for p in parts for n in p["lengths"]]
    delays = [d for p in parts for d in p["delays"]]
    detected = [d for d in delays if d is not None]
    ert = float(np.mean(lengths))
    return {
        "detector": parts[0]["detector"],
        "calibration_cpu_s": float(np.mean([c for p in parts for c in p["calibration_cpu_s"]])),
        "cpu_per_update_ms": 1000
        * sum(p["cpu_s"] for p in parts)
        / max(sum(p["updates"] for p in parts), 1),
        "measured_ert": ert,
        "false_alarms_per_1000": 1000 / ert,
        "median_delay": float(np.median(detected)) if detected else float("nan"),
        "missed_or_early": len(delays) - len(detected),
        "runs": len(lengths),
    }


def synthetic() -> tuple[F32, Callable[[int, bool], F32]]:
    dim = 384
    ref = np.random.default_rng(0).standard_normal((2000, dim)).astype(np.float32)

    def streams(seed: int, shifted: bool) -> F32:
        # Runs end at the first alarm; 5 x ERT caps the rare long one (P ~ e^-5).
        length = 5 * ERT + WINDOW if not shifted else SHIFT_AT + 20 * WINDOW
        x = np.random.default_rng(seed + 1).standard_normal((length, dim)).astype(np.float32)
        if shifted:
            x[SHIFT_AT:, :20] += 0.3
        return x

    return ref, streams


def clinc(make: Embedder) -> tuple[F32, Callable[[int, bool], F32]]:
    """Reference: 2,000 random utterances of four domains (all splits); no-change streams: the
    other utterances of those domains, without repeats; the change: other domains."""
    rows = [r for r in load() if not r.is_oos]
    before = {"banking", "credit_cards", "work", "utility"}
    x = make.embed([r.text for r in rows])
    inside = np.flatnonzero([r.domain in before for r in rows])
    outside = np.flatnonzero([r.domain not in before for r in rows])
    order = np.random.default_rng(0).permutation(inside)
    ref_rows, pool = order[:2000], order[2000:]

    def streams(seed: int, shifted: bool) -> F32:
        rng = np.random.default_rng(seed + 1)
        same = rng.permutation(pool)
        if not shifted:  # as long as the pool allows (7,000 steps; most runs alarm far sooner)
            kept: F32 = x[same]
            return kept
        tail = rng.choice(outside, 20 * WINDOW, replace=False)
        return np.concatenate([x[same[:SHIFT_AT]], x[tail]])

    return x[ref_rows], streams


def _line(r: dict[str, Any]) -> str:
    return (
        f"  {r['detector']:40s} calibration {r['calibration_cpu_s']:6.2f} s CPU | "
        f"{r['cpu_per_update_ms']:.3f} ms CPU/update | measured ERT "
        f"{r['measured_ert']:7.0f} ({r['false_alarms_per_1000']:.2f} false alarms "
        f"/1000 steps) | median delay {r['median_delay']:.0f} "
        f"(missed/early {r['missed_or_early']}) | {r['runs']} runs"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=300, help="runs of each kind, lookout")
    parser.add_argument("--alibi-runs", type=int, default=30, help="alibi is ~20x slower")
    parser.add_argument("--no-alibi", action="store_true")
    parser.add_argument("--only", choices=["lookout", "alibi"], help=argparse.SUPPRESS)
    parser.add_argument("--stream", choices=["synthetic", "clinc150"], help="only this stream")
    parser.add_argument("--embedder", choices=EMBEDDERS, default="static", help="for CLINC150")
    parser.add_argument("--onnx-fp32", help="a directory with model.fp32.onnx")
    parser.add_argument("--first-seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument(
        "--target-ert",
        type=float,
        default=ERT,
        help="calibrate lookout to this ERT (to compare delays at alibi's "
        "measured false-alarm rate)",
    )
    args = parser.parse_args()
    TARGET_ERT["lookout"] = args.target_ert
    if args.only:  # one detector, some runs of one stream, in a process of its own
        if args.stream == "synthetic":
            ref, streams = synthetic()
        else:
            ref, streams = clinc(embedder(args.embedder, args.onnx_fp32))
        kind = Alibi if args.only == "alibi" else Ours
        result = measure(kind, ref, streams, args.runs, args.first_seed)
        print(json.dumps({**result, "reference": list(ref.shape)}))
        return
    # Fresh processes, alibi in chunks of 10 runs, and glibc's mmap threshold fixed: with the
    # dynamic one, alibi's calibration temporaries (15 MB each, thousands) piled up past this
    # box's 24 GiB now and then.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"}
    for stream in [args.stream] if args.stream else ["synthetic", "clinc150"]:
        results = []
        plans = [("lookout", [(0, args.runs)])]
        if not args.no_alibi:
            plans.append(
                (
                    "alibi",
                    [(s, min(10, args.alibi_runs - s)) for s in range(0, args.alibi_runs, 10)],
                )
            )
        for only, chunks in plans:
            parts = []
            for first, runs in chunks:
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--only",
                        only,
                        "--stream",
                        stream,
                        "--runs",
                        str(runs),
                        "--first-seed",
                        str(first),
                        "--target-ert",
                        str(args.target_ert),
                        "--embedder",
                        args.embedder,
                        *(["--onnx-fp32", args.onnx_fp32] if args.onnx_fp32 else []),
                    ],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=env,
                ).stdout
                parts.append(json.loads(out.strip().splitlines()[-1]))
            results.append(summary(parts))
            if len(results) == 1:
                shape = tuple(parts[0]["reference"])
                print(
                    f"\n{stream}: reference {shape}, ERT {ERT}, window {WINDOW}"
                    + (f", embedder {args.embedder}" if stream == "clinc150" else "")
                )
            print(_line(results[-1]), flush=True)
        if len(results) == 2:
            ours, alibi = results
            print(
                f"  ratios lookout/alibi: CPU per update "
                f"{ours['cpu_per_update_ms'] / alibi['cpu_per_update_ms']:.3f}, calibration "
                f"{ours['calibration_cpu_s'] / alibi['calibration_cpu_s']:.3f}, median delay "
                f"{ours['median_delay'] / alibi['median_delay']:.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
