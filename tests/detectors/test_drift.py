"""Online MMD drift: calibrated false alarms, detection of a known shift, exact save/restore."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from lookout.detectors.drift import DriftWindow, MmdDrift
from lookout.detectors.errors import DetectorError, NotFitted

DIM = 32


def stream(seed: int, n: int, shift_at: int | None = None) -> NDArray[np.float32]:
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    if shift_at is not None:
        x[shift_at:, :4] += 0.6
    return x


@pytest.fixture(scope="module")
def detector() -> MmdDrift:
    d = MmdDrift(window=20, ert=100, n_bootstraps=1000, seed=3)
    d.fit(stream(0, 600))
    return d


def run_length(detector: MmdDrift, seed: int, limit: int = 5000) -> int:
    """Steps after the window first fills until the first alarm, on a stream with no shift."""
    window = detector.new_window()
    data = stream(seed, limit + detector.window)
    for step in range(len(data)):
        window.add(data[step : step + 1])
        if detector.score(window).drifted:
            return step - detector.window + 2
    return limit


def test_false_alarm_rate_without_shift_is_one_over_ert(detector: MmdDrift) -> None:
    lengths = [run_length(detector, seed) for seed in range(1000, 1300)]
    rate = 1.0 / float(np.mean(lengths))
    assert abs(rate - 1 / detector.ert) <= 0.25 / detector.ert, np.mean(lengths)


def test_a_known_shift_is_detected_soon(detector: MmdDrift) -> None:
    delays = []
    for seed in range(20):
        window = detector.new_window()
        data = stream(500 + seed, 400, shift_at=100)
        for step in range(len(data)):
            window.add(data[step : step + 1])
            if step >= 100 and detector.score(window).drifted:
                delays.append(step - 100)
                break
    assert len(delays) == 20 and float(np.median(delays)) < detector.window


def test_score_says_drift_as_a_ratio_and_never_mutates(detector: MmdDrift) -> None:
    window = detector.new_window()
    window.add(stream(7, 10))
    early = detector.score(window)
    assert early.score is None and early.drift_score is None and early.count == 10
    window.add(stream(8, 200, shift_at=0))
    first, again = detector.score(window), detector.score(window)
    assert first == again and first.drifted
    assert first.drift_score == pytest.approx(first.score / first.threshold)  # type: ignore[operator]


def test_the_window_sums_match_a_fresh_computation(detector: MmdDrift) -> None:
    sliding = detector.new_window()
    sliding.add(stream(9, 137))
    fresh = detector.new_window()
    fresh.add(sliding.embeddings())
    assert detector.score(sliding).score == pytest.approx(detector.score(fresh).score, rel=1e-6)


def test_save_and_restore_give_identical_scores(detector: MmdDrift) -> None:
    window = detector.new_window()
    window.add(stream(11, 50, shift_at=25))
    restored = MmdDrift.from_state({k: v.copy() for k, v in detector.state().items()})
    restored_window = DriftWindow.from_state(restored, window.state())
    assert restored.score(restored_window) == detector.score(window)
    more = stream(12, 5)
    window.add(more)
    restored_window.add(more)
    assert restored.score(restored_window) == detector.score(window)


def test_explanation_names_the_shifted_examples(detector: MmdDrift) -> None:
    window = detector.new_window()
    data = stream(13, 20)
    data[[3, 17]] += 4.0  # two recent examples far from everything
    window.add(data)
    explained = detector.explain(window, top=2)
    assert sorted(explained.window_farthest_from_reference) == [3, 17]
    assert len(explained.reference_least_like_window) == 2


def test_misuse_is_a_clear_error() -> None:
    with pytest.raises(DetectorError, match="n_bootstraps must exceed ert"):
        MmdDrift(window=20, ert=1000, n_bootstraps=500)
    with pytest.raises(DetectorError, match="at least 80 embeddings"):
        MmdDrift(window=20, ert=100).fit(stream(0, 50))
    with pytest.raises(NotFitted):
        MmdDrift(window=20, ert=100).new_window()


def test_a_reference_of_one_repeated_text_scores_without_failing() -> None:
    # A templated app sends the same prompt: the reference is one point, its threshold 0.
    same = np.tile(stream(1, 1), (600, 1))
    d = MmdDrift(window=20, ert=100, n_bootstraps=200, seed=3)
    d.fit(same)
    window = d.new_window()
    window.add(same[:40])
    steady = d.score(window)
    assert steady.drifted is False and steady.drift_score is not None
    assert steady.drift_score < 1.0
    window.add(stream(2, 40))  # anything else is drift, with a finite score
    changed = d.score(window)
    assert changed.drifted and changed.drift_score is not None and np.isfinite(changed.drift_score)
    restored = MmdDrift.from_state(d.state())
    assert restored.score(window) == changed
