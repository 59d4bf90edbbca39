"""lookout's anomaly detector on the Numenta Anomaly Benchmark (NAB).

Each of NAB's 58 series (bench/data/nab, MIT) is streamed once through a fresh
`lookout.detectors.anomaly.AnomalyDetector`, in order, each value scored before it is learned
(no look-ahead). The per-point scores are then scored with NAB's method (bench/nab_scoring.py,
a port of the reference scorer) for its three profiles: the corpus-wide threshold sweep, and
the score at lookout's own threshold (`threshold_for(false_alarms_per_week)`, no sweep).
Also: CPU per point, and the false alarms per week measured on NAB's anomaly-free series.

    .venv/bin/python bench/nab.py [--false-alarms-per-week 1] [--episode-points 0]

NAB wants one detection per anomaly: as lookout's alert engine notifies once per firing
episode, the score a point reports is its z only when no point of the `--episode-points`
before it was already above it (`episode`), which is what a person is paged for.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from nab_scoring import Costs, normalised, score_at, score_by_threshold, sweep_points

from lookout.detectors.anomaly import (
    AnomalyConfig,
    AnomalyDetector,
    Direction,
    Seasonality,
    threshold_for,
)

DATA = Path(__file__).parent / "data" / "nab"
PROFILES = {
    "standard": "standard",
    "reward_low_FP": "reward_low_FP_rate",
    "reward_low_FN": "reward_low_FN_rate",
}


@dataclass(frozen=True, slots=True)
class Series:
    name: str
    timestamps: list[datetime]
    values: list[float]
    windows: list[tuple[datetime, datetime]]


def _when(text: str) -> datetime:
    return datetime.fromisoformat(text.split(".", maxsplit=1)[0])


def load_corpus() -> list[Series]:
    labels = json.loads((DATA / "labels" / "combined_windows.json").read_text())
    corpus = []
    for name, windows in sorted(labels.items()):
        with (DATA / "data" / name).open() as f:
            rows = list(csv.DictReader(f))
        corpus.append(
            Series(
                name,
                [_when(r["timestamp"]) for r in rows],
                [float(r["value"]) for r in rows],
                [(_when(a), _when(b)) for a, b in windows],
            )
        )
    return corpus


def run_series(series: Series, config: AnomalyConfig, episode_points: int) -> list[float]:
    """Each value scored once, in order, then learned: the z along the direction, 0 while
    learning; with `episode_points`, only a point above every one of the previous ones."""
    detector = AnomalyDetector(config)
    # (index, score) with decreasing scores: the first is the window's maximum.
    peaks: deque[tuple[int, float]] = deque()
    out = []
    for i, (t, v) in enumerate(zip(series.timestamps, series.values, strict=True)):
        s = detector.update(t.timestamp(), v).score
        while peaks and peaks[0][0] <= i - episode_points:
            peaks.popleft()
        reported = s if not peaks or s > peaks[0][1] else 0.0
        while peaks and peaks[-1][1] <= s:
            peaks.pop()
        if episode_points:
            peaks.append((i, s))
        out.append(max(0.0, reported))
    return out


def to_unit(z: float) -> float:
    """NAB wants scores in [0, 1]; any increasing map keeps the sweep's order."""
    return z / (1.0 + z)


def evaluate(
    corpus: list[Series], zs: dict[str, list[float]], own_z: float
) -> dict[str, tuple[float, float, float]]:
    """Per profile: (normalised score at the swept threshold, its z, at lookout's own z)."""
    profiles = json.loads((DATA / "config" / "profiles.json").read_text())
    windows = sum(len(s.windows) for s in corpus)
    out = {}
    for short, name in PROFILES.items():
        m = profiles[name]["CostMatrix"]
        costs = Costs(m["tpWeight"], m["fpWeight"], m["fnWeight"])
        points, null_points = [], []
        for s in corpus:
            unit = [to_unit(z) for z in zs[s.name]]
            points += sweep_points(s.name, s.timestamps, unit, s.windows, costs)
            null_points += sweep_points(s.name, s.timestamps, [0.5] * len(unit), s.windows, costs)
        best_threshold, best = max(score_by_threshold(points, costs), key=lambda r: r[1])
        null = max(r[1] for r in score_by_threshold(null_points, costs))
        own = score_at(points, costs, to_unit(own_z))
        swept_z = best_threshold / (1.0 - best_threshold) if best_threshold < 1 else float("inf")
        out[short] = (
            normalised(best, null, windows, costs),
            swept_z,
            normalised(own, null, windows, costs),
        )
    return out


def false_alarms_per_week(corpus: list[Series], zs: dict[str, list[float]], z: float) -> float:
    """Alarm episodes (runs of points above z) per week on the series without anomalies."""
    episodes, seconds = 0, 0.0
    for s in corpus:
        if s.windows:
            continue
        above = [v > z for v in zs[s.name]]
        episodes += sum(1 for i, a in enumerate(above) if a and (i == 0 or not above[i - 1]))
        seconds += (s.timestamps[-1] - s.timestamps[0]).total_seconds()
    return episodes / (seconds / (7 * 86400.0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--false-alarms-per-week", type=float, default=1.0)
    parser.add_argument("--episode-points", type=int, default=1000)
    parser.add_argument("--trailing-points", type=int, default=2048)
    parser.add_argument("--min-points", type=int, default=AnomalyConfig().min_points)
    parser.add_argument("--seasonality", default="auto", choices=[s.value for s in Seasonality])
    parser.add_argument("--direction", default="both", choices=[d.value for d in Direction])
    args = parser.parse_args()
    corpus = load_corpus()
    direction = Direction(args.direction)
    zs: dict[str, list[float]] = {}
    cpu, points = 0.0, 0
    for s in corpus:
        # The series' own sampling interval: the decisions a week holds.
        interval_s = (s.timestamps[-1] - s.timestamps[0]).total_seconds() / (len(s.values) - 1)
        own = threshold_for(args.false_alarms_per_week, interval_s, direction)
        config = AnomalyConfig(
            direction=direction,
            seasonality=Seasonality(args.seasonality),
            threshold_z=own,
            trailing_points=args.trailing_points,
            min_points=args.min_points,
        )
        start = time.process_time()
        zs[s.name] = run_series(s, config, args.episode_points)
        cpu += time.process_time() - start
        points += len(s.values)
    # One z for the corpus' own-threshold score: NAB's typical 5-minute interval.
    own_z = threshold_for(args.false_alarms_per_week, 300.0, direction)
    print(f"NAB: {len(corpus)} series, {points} points, CPU {1e6 * cpu / points:.1f} us/point")
    print(f"config: {vars(args)}")
    for profile, (swept, z, at_own) in evaluate(corpus, zs, own_z).items():
        print(f"{profile:13s} swept {swept:5.1f} (z > {z:.2f}) at own z {own_z:.2f}: {at_own:5.1f}")
    fa = false_alarms_per_week(corpus, zs, own_z)
    print(f"false alarms/week on the anomaly-free series at z > {own_z:.2f}: {fa:.2f}")


if __name__ == "__main__":
    main()
