"""`score_batch`, the detection thread's step for a track with a reference, is a pure
function: the same batch against the same state gives the same scores, and the reference and
drift window it is given are left as they were (the track takes the new window it returns)."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from lookout.detectors.drift import DriftWindow
from lookout.detectors.reference import DetectorParams, FittedReference, fit_reference
from lookout.monitor.detection.scoring import BatchScores, score_batch


def rows(n: int, seed: int, *, topic: int = 0) -> NDArray[np.float32]:
    """Unit rows of one "topic": most of their weight on its own 8 of 16 dimensions."""
    x = 0.05 * np.random.default_rng(seed).standard_normal((n, 16)).astype(np.float32)
    x[:, 8 * topic : 8 * topic + 8] += np.random.default_rng(seed + 100).standard_normal((n, 8))
    out: NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def copied(states: dict[str, NDArray[np.generic]]) -> dict[str, NDArray[np.generic]]:
    return {key: value.copy() for key, value in states.items()}


def assert_same_states(
    a: dict[str, NDArray[np.generic]], b: dict[str, NDArray[np.generic]]
) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        np.testing.assert_array_equal(value, b[key], err_msg=key)


def assert_same_scores(a: BatchScores, b: BatchScores) -> None:
    np.testing.assert_array_equal(a.ood.scores, b.ood.scores)
    np.testing.assert_array_equal(a.ood.flagged, b.ood.flagged)
    assert a.drift == b.drift and a.explanation == b.explanation
    assert_same_states(a.window.state(), b.window.state())


def reference_and_window() -> tuple[FittedReference, DriftWindow]:
    fitted = fit_reference(rows(300, seed=0), DetectorParams(drift_window=10, drift_ert=50))
    window = fitted.drift.new_window()
    window.add(rows(6, seed=1))  # part full: the batch fills it
    return fitted, window


def test_score_batch_is_pure() -> None:
    fitted, window = reference_and_window()
    batch = rows(12, seed=2, topic=1)  # another topic: drift, and OOD flags
    reference_before, window_before = copied(fitted.states()), copied(window.state())
    batch_before = batch.copy()

    first = score_batch(fitted, window, None, batch)
    second = score_batch(fitted, window, None, batch)

    assert_same_scores(first, second)
    assert first.drift.drifted and first.ood.flagged.any() and first.explanation is not None
    assert first.window is not window and first.window.count == 10
    # What it was given is unchanged: the reference, the window and the batch.
    assert_same_states(fitted.states(), reference_before)
    assert_same_states(window.state(), window_before)
    assert window.count == 6
    np.testing.assert_array_equal(batch, batch_before)


def test_a_window_already_drifted_is_not_explained_again() -> None:
    fitted, window = reference_and_window()
    batch = rows(12, seed=2, topic=1)
    drifted = score_batch(fitted, window, None, batch)
    again = score_batch(fitted, drifted.window, drifted.drift, rows(4, seed=3, topic=1))
    assert again.drift.drifted and again.explanation is None
    assert drifted.window.count == 10  # the first result's window, left as it was
    assert_same_states(
        drifted.window.state(), score_batch(fitted, window, None, batch).window.state()
    )
