"""Robust statistics over a bounded window of recent values, shared by the anomaly
detector's baselines and its shape score."""

from __future__ import annotations

import bisect
from collections import deque

IQR_TO_SIGMA = 1.349  # the IQR of a standard normal
WIDE_TO_SIGMA = 3.29  # its 5-95% range
WIDE_WEIGHT = 0.5  # ties: the spread is at least half the 5-95% range's


class SortedWindow:
    """A bounded window of the last `size` values, also kept sorted for O(log n) quantiles."""

    def __init__(self, size: int, values: list[float] | None = None) -> None:
        self.size = size
        self.order: deque[float] = deque(maxlen=size)
        self.sorted: list[float] = []
        for v in values or []:
            self.add(v)

    def add(self, value: float) -> None:
        if len(self.order) == self.size:
            old = self.order[0]
            del self.sorted[bisect.bisect_left(self.sorted, old)]
        self.order.append(value)
        bisect.insort(self.sorted, value)

    def __len__(self) -> int:
        return len(self.sorted)

    def quantile(self, q: float) -> float:
        s = self.sorted
        pos = q * (len(s) - 1)
        lo = int(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def robust_spread(window: SortedWindow) -> float:
    """A robust standard deviation: the IQR's, or (for values with many ties, whose IQR may
    be 0) half the 5-95% range's."""
    iqr = (window.quantile(0.75) - window.quantile(0.25)) / IQR_TO_SIGMA
    wide = (window.quantile(0.95) - window.quantile(0.05)) / WIDE_TO_SIGMA
    return max(iqr, WIDE_WEIGHT * wide)
