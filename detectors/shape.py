"""How unusual the recent shape of a series is: a k-nearest-neighbour distance over short
windows of its residuals, the second signal of `detectors.anomaly`.

The residuals are the anomaly detector's signed robust z (clipped), so the windows are
scaled online by the series' own level and spread, with no look-ahead (knncad, the conformal
k-NN entry on NAB, scales by the file's minimum and maximum instead; Burnaev and Ishimtsev,
arXiv:1608.04585). Each point, the window of the last `points` residuals is compared with the
`memory` windows that ended `points` to `points + memory - 1` points before it (never
overlapping it); its distance is the mean Euclidean distance to the `neighbours` nearest.
That distance is then read as a robust z against the distances of the last `tail_points`
points, so it is on the same footing as the level's z (conformal k-NN ranks it among past
ones instead; a rank saturates at the tail's size, a z does not).

The squared distances to the windows at each lag are kept and updated in O(memory) a point:
moving both windows one step on adds the new pair of values and drops the oldest pair.
Memory: 2 x (memory + 2 x points) values, `memory` distances and `tail_points` past
distances. `score` never changes state; `update` scores and then learns.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import numpy.typing as npt

from lookout.detectors.robust import SortedWindow, robust_spread

Floats = npt.NDArray[np.float64]
CLIP_Z = 20.0  # a residual beyond this is as unusual as this: one spike does not own the distance
MIN_WINDOWS = 30  # fewer windows to compare with: no score
MIN_DISTANCES = 100  # fewer past distances: no score
BLOCK = 25  # squared distances per block when selecting the nearest


class ShapeScorer:
    """The shape score of one series (see the module docstring)."""

    def __init__(self, points: int, neighbours: int, memory: int, tail_points: int = 2048) -> None:
        self.points = points
        self.neighbours = neighbours
        self.memory = memory
        self._span = memory + 2 * points  # the values the oldest window pair reaches back to
        # Each value is written twice, at i and i + span, so that any span of the last values
        # is one contiguous slice (newest last).
        self._values: Floats = np.zeros(2 * self._span)
        self._at = 0
        # Squared distances from the newest window to the one `lag` points before it, lags
        # points + memory - 1 (first) down to points (last), as the value slices run.
        self._d2: Floats = np.zeros(memory)
        self._spare: Floats = np.zeros(memory)  # update's next _d2 (swapped, not allocated)
        self._terms: Floats = np.zeros((2, memory))
        self.seen = 0
        self._distances = SortedWindow(tail_points)

    def _advance(self, x: float, d2: Floats, terms: Floats) -> float | None:
        """Into `d2`, the squared distances with `x` as the newest residual (`terms`:
        scratch); the k-NN distance, or None with too few windows yet."""
        w, m, v = self.points, self.memory, self._values
        newest = self._at + self._span  # x_{i-1}, the last learned; x_{i-j} at newest + 1 - j
        ahead = v[newest + 2 - w - m : newest + 2 - w]  # x_{i-lag}
        behind = v[newest + 2 - 2 * w - m : newest + 2 - 2 * w]  # x_{i-w-lag}
        np.subtract(ahead, x, out=terms[0])
        np.multiply(terms[0], terms[0], out=terms[0])
        np.subtract(behind, v[newest + 1 - w], out=terms[1])
        np.multiply(terms[1], terms[1], out=terms[1])
        np.add(self._d2, terms[0], out=d2)
        np.subtract(d2, terms[1], out=d2)
        windows = min(m, self.seen + 2 - 2 * w)
        if windows < MIN_WINDOWS:
            return None
        k = self.neighbours
        if k == 1:
            return math.sqrt(max(float(d2[m - windows :].min()), 0.0))
        if windows == m and m % BLOCK == 0 and m // BLOCK > k:
            # The k smallest lie in the k blocks with the smallest minima: two small
            # selections instead of one over all `memory` (about half the time, timeit).
            blocks = d2.reshape(-1, BLOCK)
            near = blocks[blocks.min(axis=1).argsort()[:k]].ravel()  # a copy: sorted in place
            near.sort()
        else:
            near = np.partition(d2[m - windows :], k - 1)[:k]
        return sum(math.sqrt(max(d, 0.0)) for d in near[:k].tolist()) / k

    def _read(self, distance: float | None) -> float:
        if distance is None or len(self._distances) < MIN_DISTANCES:
            return 0.0
        level = self._distances.quantile(0.5)
        return (distance - level) / max(robust_spread(self._distances), 1e-9)

    def score(self, x: float) -> float:
        """The robust z of the k-NN distance were `x` the newest residual (changes nothing)."""
        x = max(-CLIP_Z, min(CLIP_Z, x))
        return self._read(self._advance(x, np.empty(self.memory), np.empty((2, self.memory))))

    def update(self, x: float) -> float:
        """Score `x`, then learn it."""
        x = max(-CLIP_Z, min(CLIP_Z, x))
        distance = self._advance(x, self._spare, self._terms)
        result = self._read(distance)
        self._push(x)
        self._d2, self._spare = self._spare, self._d2
        if distance is not None:
            self._distances.add(distance)
        return result

    def _push(self, x: float) -> None:
        self._at = (self._at + 1) % self._span
        self._values[self._at] = self._values[self._at + self._span] = x
        self.seen += 1

    def _recent(self) -> Floats:
        end = self._at + self._span + 1
        return self._values[end - self._span : end].copy()

    def save(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "values": [float(v) for v in self._recent()],
            "distances": list(self._distances.order),
            "by_lag": [float(d) for d in self._d2],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """The saved state (the squared distances by lag as saved, so that a restored scorer
        scores exactly as the saved one; recomputed from the values when the memory changed)."""
        values = [float(v) for v in state.get("values", [])][-self._span :]
        for v in [0.0] * (self._span - len(values)) + values:
            self._push(v)
        self.seen = int(state.get("seen", 0))
        for d in state.get("distances", []):
            self._distances.add(float(d))
        by_lag = state.get("by_lag", [])
        if len(by_lag) == self.memory and len(values) == self._span:
            self._d2 = np.array(by_lag, dtype=np.float64)
            return
        recent, w = self._recent(), self.points
        windows = np.lib.stride_tricks.sliding_window_view(recent, w)  # [j] ends at j + w - 1
        newest = windows[-1]
        lags = np.arange(w + self.memory - 1, w - 1, -1)
        self._d2 = ((windows[len(windows) - 1 - lags] - newest) ** 2).sum(axis=1)
