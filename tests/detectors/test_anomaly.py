"""The anomaly detector alone: scoring changes nothing, state round-trips, a level shift
scores high against a trailing baseline, a flat series is not infinitely sensitive, and a
heavy-tailed series gets the false-alarm rate its rule asked for."""

from __future__ import annotations

import json
import math
import random

from lookout.detectors.anomaly import (
    SHAPE_POINTS,
    AnomalyConfig,
    AnomalyDetector,
    Baseline,
    Direction,
    Seasonality,
    threshold_for,
)


def fed(n: int, seed: int = 3, shape_points: int = 0) -> AnomalyDetector:
    rng = random.Random(seed)
    config = AnomalyConfig(seasonality=Seasonality.NONE, shape_points=shape_points)
    detector = AnomalyDetector(config)
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


def heavy_tailed(detector: AnomalyDetector, start: int, n: int, seed: int) -> int:
    """Feeds n minutes of a quiet but heavy-tailed series (Student t, 2 degrees of freedom);
    how many of them the detector called anomalous."""
    rng = random.Random(seed)
    flagged = 0
    for i in range(start, start + n):
        noise = rng.gauss(0.0, 1.0) / math.sqrt(rng.gammavariate(1.0, 1.0))
        flagged += detector.update(i * 60.0, 100.0 + noise).anomalous
    return flagged


def test_the_series_own_tail_holds_the_false_alarm_rate_a_gaussian_threshold_does_not() -> None:
    minute_rate = 1.0 / (7 * 24 * 60)  # one a week, a decision a minute
    z = threshold_for(1.0, 60.0, Direction.BOTH)
    gaussian = AnomalyDetector(AnomalyConfig(seasonality=Seasonality.NONE, threshold_z=z))
    own = AnomalyDetector(
        AnomalyConfig(seasonality=Seasonality.NONE, threshold_z=z, tail_rate=minute_rate)
    )
    heavy_tailed(gaussian, 0, 3000, seed=5)
    heavy_tailed(own, 0, 3000, seed=5)
    # A week of the same series: a Gaussian tail's z flags dozens of quiet minutes.
    assert heavy_tailed(gaussian, 3000, 7 * 24 * 60, seed=6) > 50
    assert heavy_tailed(own, 3000, 7 * 24 * 60, seed=6) <= 10
    assert own.threshold() > 2 * z
    reading = own.score(0.0, 100.0)
    assert reading.threshold == own.threshold() and reading.high is not None
    assert reading.high - 100.0 > own.threshold() * 0.9 * (reading.spread or 0.0)


def test_an_incident_is_judged_against_the_tail_from_before_it_then_joins_it() -> None:
    config = AnomalyConfig(
        seasonality=Seasonality.NONE, threshold_z=4.0, tail_rate=0.001, tail_delay_points=60
    )
    detector = AnomalyDetector(config)
    rng = random.Random(8)
    for i in range(2000):
        detector.update(i * 60.0, 10.0 + rng.gauss(0.0, 1.0))
    flags = [
        detector.update((2000 + i) * 60.0, 20.0 + rng.gauss(0.0, 1.0)).anomalous for i in range(200)
    ]
    assert all(flags[:60])  # the first hour: against the quiet tail
    # Then the incident's own scores set the threshold: its new extremes stand out for a
    # while, then nothing (the alert resolves; a lasting shift is the new normal).
    assert not any(flags[100:])


def test_a_checkpoint_keeps_the_tail_and_an_old_one_without_it_restores() -> None:
    config = AnomalyConfig(seasonality=Seasonality.NONE, tail_rate=0.01, tail_delay_points=10)
    detector = AnomalyDetector(config)
    heavy_tailed(detector, 0, 1000, seed=9)
    state = json.loads(json.dumps(detector.save()))
    restored = AnomalyDetector.restore(config, state)
    assert restored.threshold() == detector.threshold() > config.threshold_z
    assert restored.score(0.0, 130.0) == detector.score(0.0, 130.0)
    heavy_tailed(detector, 1000, 50, seed=10)
    heavy_tailed(restored, 1000, 50, seed=10)
    assert restored.save() == detector.save()  # the delayed scores were kept in order too
    version_1 = {k: v for k, v in state.items() if k != "tail"} | {"version": 1}
    old = AnomalyDetector.restore(config, version_1)
    assert old.threshold() == config.threshold_z  # refills as values are learned
    assert old.score(0.0, 100.0).baseline is Baseline.TRAILING


def test_a_changed_shape_inside_the_band_is_anomalous_by_its_shape() -> None:
    # A slow, smooth wave: the values' level and spread alone cannot tell a saw-tooth of the
    # same amplitude from it, the shape of the last few values can.
    config = AnomalyConfig(seasonality=Seasonality.NONE, threshold_z=4.0, shape_points=SHAPE_POINTS)
    detector = AnomalyDetector(config)
    rng = random.Random(5)
    for i in range(3000):
        detector.update(i * 60.0, 10.0 + math.sin(i / 40.0) + rng.gauss(0.0, 0.02))
    quiet = [
        detector.update((3000 + i) * 60.0, 10.0 + math.sin((3000 + i) / 40.0)) for i in range(30)
    ]
    assert not any(r.anomalous for r in quiet)
    saw = [detector.update((3030 + i) * 60.0, 10.0 + (1.5 if i % 2 else -1.5)) for i in range(12)]
    assert any(r.anomalous and r.shape > r.threshold for r in saw)  # type: ignore[operator]
    inside = [r for r in saw if r.anomalous and r.low is not None and r.high is not None]
    assert any(r.low < r.value < r.high for r in inside)  # type: ignore[operator]
    off = AnomalyDetector(AnomalyConfig(seasonality=Seasonality.NONE, shape_points=0))
    assert off.save()["shape"] is None and off.score(0.0, 1.0).shape == 0.0


def test_a_checkpoint_keeps_the_shape_state_and_one_without_it_starts_it_afresh() -> None:
    config = AnomalyConfig(seasonality=Seasonality.NONE, shape_points=SHAPE_POINTS)
    detector = fed(1500, shape_points=SHAPE_POINTS)
    state = json.loads(json.dumps(detector.save()))
    restored = AnomalyDetector.restore(config, state)
    assert restored.score(1500 * 60.0, 12.5) == detector.score(1500 * 60.0, 12.5)
    rng = random.Random(4)
    for i in range(1500, 1600):
        v = 10.0 + rng.gauss(0.0, 1.0)
        assert restored.update(i * 60.0, v) == detector.update(i * 60.0, v)
    # Recomputed from the saved values alone (an older saved shape without the distances by
    # lag): the same scores to rounding.
    recomputed = AnomalyDetector.restore(config, state | {"shape": state["shape"] | {"by_lag": []}})
    fresh = fed(1500, shape_points=SHAPE_POINTS)
    shapes = [
        (recomputed.score(0.0, v).shape, fresh.score(0.0, v).shape) for v in (6.0, 14.0, 16.0)
    ]
    assert all(math.isclose(a, b, abs_tol=1e-9) for a, b in shapes) and shapes[-1][0] > 0
    before_shape = {k: v for k, v in state.items() if k != "shape"} | {"version": 2}
    old = AnomalyDetector.restore(config, before_shape)
    assert old.score(0.0, 16.0).shape == 0.0  # no shape history yet: the z alone
    assert old.score(0.0, 16.0).z == fresh.score(0.0, 16.0).z
