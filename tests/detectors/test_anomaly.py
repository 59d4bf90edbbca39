"""The anomaly detector alone: scoring changes nothing, state round-trips, a level shift
scores high against a trailing baseline, a flat series is not infinitely sensitive."""

from __future__ import annotations

import json
import random

from lookout.detectors.anomaly import (
    AnomalyConfig,
    AnomalyDetector,
    Baseline,
    Direction,
    Seasonality,
    threshold_for,
)


def fed(n: int, seed: int = 3) -> AnomalyDetector:
    rng = random.Random(seed)
    detector = AnomalyDetector(AnomalyConfig(seasonality=Seasonality.NONE))
    for i in range(n):
        detector.update(i * 60.0, 10.0 + rng.gauss(0.0, 1.0))
    return detector


def test_score_does_not_learn_and_state_round_trips_through_json() -> None:
    detector = fed(500)
    before = detector.save()
    first = detector.score(500 * 60.0, 30.0)
    assert detector.score(500 * 60.0, 30.0) == first and detector.save() == before
    restored = AnomalyDetector.restore(detector.config, json.loads(json.dumps(before)))
    assert restored.score(500 * 60.0, 30.0) == first
    assert first.baseline is Baseline.TRAILING and first.anomalous and first.z > 10  # type: ignore[operator]


def test_learning_until_min_points_then_a_band_around_the_level() -> None:
    assert fed(10).score(0.0, 100.0).baseline is Baseline.LEARNING
    reading = fed(500).score(0.0, 10.0)
    assert reading.low is not None and reading.high is not None
    assert reading.low < 10.0 < reading.high and not reading.anomalous


def test_a_flat_series_has_a_floor_under_its_spread() -> None:
    detector = AnomalyDetector(AnomalyConfig(seasonality=Seasonality.NONE))
    for i in range(100):
        detector.update(i * 60.0, 5.0)
    assert detector.score(0.0, 5.01).anomalous is False  # within 1% of the level
    assert detector.score(0.0, 6.0).anomalous is True


def test_threshold_for_gets_stricter_with_more_decisions_and_two_tails() -> None:
    up_minute = threshold_for(1.0, 60.0, Direction.UP)
    assert threshold_for(1.0, 300.0, Direction.UP) < up_minute
    assert threshold_for(1.0, 60.0, Direction.BOTH) > up_minute
