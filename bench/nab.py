"""lookout's anomaly detector on the Numenta Anomaly Benchmark (NAB).

Each of NAB's 58 series (bench/data/nab, MIT) is streamed once through a fresh
`lookout.detectors.anomaly.AnomalyDetector`, configured as a rule with
`false_alarms_per_week` at the series' own interval, in order, each value scored before it
is learned (no look-ahead). Detections are scored with NAB's method (bench/nab_scoring.py, a
port of the reference scorer) for its three profiles, two ways:

- NAB's method: every point's z, post-processed, with the corpus-wide threshold sweep (and
  at the Gaussian z of `false_alarms_per_week`, no sweep). NAB wants one detection per
  anomaly: as lookout's alert engine notifies once per firing episode, a point reports its z
  only when no point of the `--episode-points` before it was already above it, and as a rule
  with `keep_firing_for` stays firing (silent) that long after its last breach, a point
  within `--keep-firing-s` of a reported z at or above the rule's z reports 0.
- The alert engine as a rule runs: a notification where the detector's reading is
  anomalous (its own threshold, with the series' tail) with no breach within
  `--keep-firing-s` before it; no episode step, no sweep. `--engine-sweep` adds the best
  single z for all series instead (slow).

Also: CPU per point, and the false alarms / notifications per week on NAB's anomaly-free
series. `--series` scores a subset (names containing any of the substrings) for quick
iteration; figures for docs/benchmarks.md are over all 58.

    .venv/bin/python bench/nab.py [--false-alarms-per-week 1] [--episode-points 1000]
        [--keep-firing-s 3600] [--tail-delay-s 3600] [--gaussian] [--engine-sweep]
        [--shape-points 0] [--shape-neighbours 3] [--shape-memory 1000] [--shape-weight 0.5]
        [--series SUBSTRING ...] [--per-series]
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

from nab_scoring import (
    Costs,
    Point,
    normalised,
    score_at,
    score_by_threshold,
    score_detections,
    sweep_points,
)

from lookout.detectors.anomaly import (
    SHAPE_POINTS,
    WEEK_S,
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


def run_series(series: Series, config: AnomalyConfig) -> tuple[list[float], list[bool]]:
    """Each value scored once, in order, then learned: the z along the direction (0 while
    learning), and whether the detector called it anomalous at its own threshold."""
    detector = AnomalyDetector(config)
    scores, anomalous = [], []
    for t, v in zip(series.timestamps, series.values, strict=True):
        reading = detector.update(t.timestamp(), v)
        scores.append(max(0.0, reading.score))
        anomalous.append(reading.anomalous)
    return scores, anomalous


def reported(
    raw: list[float], threshold_z: float, episode_points: int, keep_points: int
) -> list[float]:
    """The post-processing: with `episode_points`, a point reports its z only when it is above
    every one of the previous ones; with `keep_points`, 0 within that many points after a
    reported z >= `threshold_z` (a rule's keep_firing_for; each such point extends it)."""
    # (index, score) with decreasing scores: the first is the window's maximum.
    peaks: deque[tuple[int, float]] = deque()
    out = []
    firing_until = -1
    for i, s in enumerate(raw):
        while peaks and peaks[0][0] <= i - episode_points:
            peaks.popleft()
        r = s if not peaks or s > peaks[0][1] else 0.0
        while peaks and peaks[-1][1] <= s:
            peaks.pop()
        if episode_points:
            peaks.append((i, s))
        silent = i <= firing_until
        if r >= threshold_z:
            firing_until = i + keep_points
        out.append(0.0 if silent else r)
    return out


def engine_notifications(raw: list[float], z: float, keep_points: int) -> list[bool]:
    """Where the alert engine notifies FIRING for a rule at `z` (`for: 0`) fed every point's
    z, no episode step: a breach with no breach in the `keep_points` before it."""
    hold = max(1, keep_points)
    last = -hold - 1
    out = []
    for i, s in enumerate(raw):
        breach = s > z
        out.append(breach and i - last > hold)
        if breach:
            last = i
    return out


def profile_costs() -> dict[str, Costs]:
    """Each profile's weights (true positive, false positive, false negative), by short name."""
    profiles = json.loads((DATA / "config" / "profiles.json").read_text())
    out = {}
    for short, name in PROFILES.items():
        m = profiles[name]["CostMatrix"]
        out[short] = Costs(m["tpWeight"], m["fpWeight"], m["fnWeight"])
    return out


Scorable = dict[str, tuple[Costs, dict[str, list[Point]]]]  # profile -> (costs, file -> points)


def scorable(corpus: list[Series]) -> Scorable:
    """Per profile, each file's points as NAB's scorer weighs them (detections aside)."""
    out = {}
    for short, costs in profile_costs().items():
        out[short] = (
            costs,
            {
                s.name: sweep_points(s.name, s.timestamps, [0.0] * len(s.values), s.windows, costs)
                for s in corpus
            },
        )
    return out


def notification_scores(
    corpus: list[Series], weighed: Scorable, notes: dict[str, list[bool]]
) -> dict[str, float]:
    """Per profile, NAB's normalised score of these detections (no sweep)."""
    windows = sum(len(s.windows) for s in corpus)
    out = {}
    for short, (costs, points) in weighed.items():
        raw = sum(score_detections(points[s.name], costs, notes[s.name]) for s in corpus)
        out[short] = normalised(raw, -costs.fn * windows, windows, costs)
    return out


def engine_sweep(
    corpus: list[Series], weighed: Scorable, raw: dict[str, list[float]], keep: dict[str, int]
) -> dict[str, tuple[float, float]]:
    """Per profile, the engine's notifications on every z at the best fixed z of a grid
    (the threshold as one z for every series, as in NAB's sweep): (score, that z)."""
    best: dict[str, tuple[float, float]] = {}
    for z in [1.5 + 0.25 * i for i in range(35)] + [12.0, 15.0, 20.0, 30.0]:
        notes = {s.name: engine_notifications(raw[s.name], z, keep[s.name]) for s in corpus}
        for short, value in notification_scores(corpus, weighed, notes).items():
            if short not in best or value > best[short][0]:
                best[short] = (value, z)
    return best


def to_unit(z: float) -> float:
    """NAB wants scores in [0, 1]; any increasing map keeps the sweep's order."""
    return z / (1.0 + z)


def evaluate(
    corpus: list[Series], zs: dict[str, list[float]], own_z: float
) -> dict[str, tuple[float, float, float]]:
    """Per profile: (normalised score at the swept threshold, its z, at lookout's own z)."""
    windows = sum(len(s.windows) for s in corpus)
    out = {}
    for short, costs in profile_costs().items():
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


def per_series(corpus: list[Series], zs: dict[str, list[float]]) -> None:
    """Each series' raw standard score at the corpus' swept threshold, with the windows it
    caught and its false positives (points above the threshold outside every window): to set
    beside a published detector's per-file scores (NAB's results/<detector>/*_scores.csv)."""
    costs = profile_costs()["standard"]
    points = {
        s.name: sweep_points(
            s.name, s.timestamps, [to_unit(z) for z in zs[s.name]], s.windows, costs
        )
        for s in corpus
    }
    threshold, _ = max(
        score_by_threshold([p for ps in points.values() for p in ps], costs), key=lambda r: r[1]
    )
    print(f"per series, standard profile at z > {threshold / (1.0 - threshold):.2f}:")
    for s in corpus:
        scored = [p for p in points[s.name] if p.window != "probationary"]
        caught = {p.window for p in scored if p.window is not None and p.score >= threshold}
        false_positives = sum(1 for p in scored if p.window is None and p.score >= threshold)
        print(
            f"  {s.name:58s} {score_at(points[s.name], costs, threshold):6.2f}"
            f"  windows {len(caught)}/{len(s.windows)}  false positives {false_positives}"
        )


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


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--false-alarms-per-week", type=float, default=1.0)
    parser.add_argument("--episode-points", type=int, default=1000)
    parser.add_argument("--keep-firing-s", type=float, default=3600.0)
    parser.add_argument("--tail-delay-s", type=float, default=3600.0)
    parser.add_argument("--gaussian", action="store_true", help="no threshold from the tail")
    parser.add_argument("--engine-sweep", action="store_true", help="also sweep a fixed z")
    parser.add_argument("--series", nargs="*", default=[], help="substrings of series names")
    parser.add_argument(
        "--per-series", action="store_true", help="each series' standard score at the sweep's z"
    )
    parser.add_argument("--trailing-points", type=int, default=AnomalyConfig().trailing_points)
    parser.add_argument("--min-points", type=int, default=AnomalyConfig().min_points)
    parser.add_argument("--seasonality", default="auto", choices=[s.value for s in Seasonality])
    parser.add_argument("--direction", default="both", choices=[d.value for d in Direction])
    default = AnomalyConfig()
    # As a rule runs it: with the shape score unless the rule says `shape: false`.
    parser.add_argument("--shape-points", type=int, default=SHAPE_POINTS, help="0: off")
    parser.add_argument("--shape-neighbours", type=int, default=default.shape_neighbours)
    parser.add_argument("--shape-memory", type=int, default=default.shape_memory)
    parser.add_argument("--shape-weight", type=float, default=default.shape_weight)
    parser.add_argument("--shape-min-z", type=float, default=default.shape_min_z)
    parser.add_argument("--shape-cap", type=float, default=default.shape_cap)
    return parser.parse_args()


def config_for(args: argparse.Namespace, interval_s: float) -> AnomalyConfig:
    """What an anomaly rule with `false_alarms_per_week` gives the detector, at the series'
    own interval (monitor/anomaly.py does the same at a minute)."""
    direction = Direction(args.direction)
    return AnomalyConfig(
        direction=direction,
        seasonality=Seasonality(args.seasonality),
        threshold_z=threshold_for(args.false_alarms_per_week, interval_s, direction),
        trailing_points=args.trailing_points,
        min_points=args.min_points,
        tail_rate=0.0 if args.gaussian else args.false_alarms_per_week * interval_s / WEEK_S,
        tail_delay_points=round(args.tail_delay_s / interval_s),
        shape_points=args.shape_points,
        shape_neighbours=args.shape_neighbours,
        shape_memory=args.shape_memory,
        shape_weight=args.shape_weight,
        shape_min_z=args.shape_min_z,
        shape_cap=args.shape_cap,
    )


def main() -> None:
    args = arguments()
    corpus = [s for s in load_corpus() if not args.series or any(p in s.name for p in args.series)]
    zs: dict[str, list[float]] = {}
    raw: dict[str, list[float]] = {}
    notes: dict[str, list[bool]] = {}
    keep: dict[str, int] = {}
    cpu, points = 0.0, 0
    for s in corpus:
        # The series' own sampling interval: the decisions a week holds.
        interval_s = (s.timestamps[-1] - s.timestamps[0]).total_seconds() / (len(s.values) - 1)
        config = config_for(args, interval_s)
        keep[s.name] = round(args.keep_firing_s / interval_s)
        start = time.process_time()
        raw[s.name], anomalous = run_series(s, config)
        zs[s.name] = reported(raw[s.name], config.threshold_z, args.episode_points, keep[s.name])
        cpu += time.process_time() - start
        points += len(s.values)
        flags = [1.0 if a else 0.0 for a in anomalous]
        notes[s.name] = engine_notifications(flags, 0.5, keep[s.name])
    # One z for the corpus' own-threshold score: NAB's typical 5-minute interval.
    own_z = threshold_for(args.false_alarms_per_week, 300.0, Direction(args.direction))
    print(f"NAB: {len(corpus)} series, {points} points, CPU {1e6 * cpu / points:.1f} us/point")
    print(f"config: {vars(args)}")
    for profile, (swept, z, at_own) in evaluate(corpus, zs, own_z).items():
        print(f"{profile:13s} swept {swept:5.1f} (z > {z:.2f}) at z {own_z:.2f}: {at_own:5.1f}")
    if args.per_series:
        per_series(corpus, zs)
    fa = false_alarms_per_week(corpus, zs, own_z)
    print(f"false alarms/week on the anomaly-free series at z > {own_z:.2f}: {fa:.2f}")
    # The alert engine as a rule runs it: every point's reading at the detector's own
    # threshold, notifying once per firing, keep_firing_for; no episode step, no sweep.
    weighed = scorable(corpus)
    for profile, value in notification_scores(corpus, weighed, notes).items():
        print(f"{profile:13s} alert engine at the rule's own threshold: {value:5.1f}")
    flagged = {name: [1.0 if n else 0.0 for n in ns] for name, ns in notes.items()}
    fa = false_alarms_per_week(corpus, flagged, 0.5)
    print(f"alert engine: notifications/week on the anomaly-free series: {fa:.2f}")
    if args.engine_sweep:
        for profile, (value, z) in engine_sweep(corpus, weighed, raw, keep).items():
            print(f"{profile:13s} alert engine at one fixed z for all: {value:5.1f} (z > {z:.2f})")


if __name__ == "__main__":
    main()
