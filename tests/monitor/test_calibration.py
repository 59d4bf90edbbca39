"""References fitted in a child process: the same detectors as in-process, errors reported,
and a stop kills a fit under way instead of waiting for it."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from numpy.typing import NDArray

from lookout.detectors.errors import DetectorError
from lookout.detectors.reference import DetectorParams, fit_reference
from lookout.monitor.detection.calibration import ReferenceFitter
from tests.conftest import eventually


def embeddings(n: int, seed: int = 0) -> NDArray[np.float32]:
    x = np.random.default_rng(seed).standard_normal((n, 32)).astype(np.float32)
    out: NDArray[np.float32] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def test_a_fit_in_a_child_process_equals_one_in_process() -> None:
    x, params = embeddings(400), DetectorParams(drift_window=50, drift_ert=200)
    fitter = ReferenceFitter()
    try:
        isolated = fitter.fit(x, params)
    finally:
        fitter.close()
    local = fit_reference(x, params)
    for key, value in local.states().items():
        np.testing.assert_array_equal(isolated.states()[key], value, err_msg=key)
    batch = embeddings(60, seed=1)
    ours, theirs = isolated.ood.score(batch), local.ood.score(batch)
    np.testing.assert_array_equal(ours.scores, theirs.scores)
    assert ours.threshold == theirs.threshold


def test_a_failed_fit_is_a_detector_error() -> None:
    fitter = ReferenceFitter()
    try:
        with pytest.raises(DetectorError, match="reference fitting failed"):
            fitter.fit(embeddings(10), DetectorParams(drift_window=50))  # too few
    finally:
        fitter.close()


async def test_closing_kills_a_fit_under_way() -> None:
    fitter = ReferenceFitter()
    future = fitter.submit(embeddings(4000), DetectorParams(drift_window=200, drift_ert=200_000))
    await eventually(lambda: fitter.busy)
    started = time.monotonic()
    await asyncio.to_thread(fitter.close)
    assert time.monotonic() - started < 5
    with pytest.raises(DetectorError, match="ended early"):
        future.result(timeout=5)
    with pytest.raises(DetectorError, match="stopping"):
        fitter.fit(embeddings(400), DetectorParams(drift_window=50))
