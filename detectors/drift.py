"""Embedding drift: an online maximum mean discrepancy (MMD) test of the recent window against a
reference, its threshold calibrated by bootstrap to an expected run time between false alarms.

In the manner of online MMD detectors (Cobb et al., 2022; alibi-detect's MMDDriftOnline), in
plain numpy: the reference is split once into a reference part R and a pool H. Windows drawn
from H (no shift, by construction) give the statistic's null behaviour; the threshold is the
level that a no-shift stream crosses with probability 1/ERT at each step, given that it has
not crossed before (alarms of overlapping windows come in runs, so the plain quantile would
alarm less often than asked). Each update then costs one kernel row against R and one against
the window, thanks to running sums; `score` reads the sums and never mutates anything.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from lookout.detectors.arrays import F32
from lookout.detectors.errors import DetectorError, NotFitted

F64 = NDArray[np.float64]
_CHUNK = 512
# The least threshold: a reference of one text repeated (a templated app) calibrates to 0, and
# then any other text is drift; a floor keeps the score finite (MMD^2 of the RBF kernel is in
# [0, 2]; float noise on identical windows is ~1e-16).
MIN_THRESHOLD = 1e-6


@dataclass(frozen=True, slots=True)
class DriftResult:
    score: float | None  # MMD^2 estimate of window vs reference; None until the window is full
    threshold: float
    drift_score: float | None  # score / threshold: above 1 means drift
    drifted: bool
    count: int  # embeddings in the window


@dataclass(frozen=True, slots=True)
class DriftExplanation:
    """What changed: reference examples least like the window, window examples farthest from
    the reference (indices into the reference given to `fit`, and into the window, oldest
    first)."""

    reference_least_like_window: list[int]
    window_farthest_from_reference: list[int]


def _sq_norms(x: F32) -> F32:
    out: F32 = np.einsum("ij,ij->i", x, x).astype(np.float32)
    return out


class MmdDrift:
    def __init__(
        self,
        *,
        window: int = 200,
        ert: float = 10_000,
        n_bootstraps: int | None = None,
        seed: int = 0,
    ) -> None:
        if window < 5:
            raise DetectorError("the drift window must hold at least 5 embeddings")
        if ert <= 1:
            raise DetectorError("ert (expected run time between false alarms) must exceed 1")
        self.window = window
        self.ert = float(ert)
        # The 1 - 1/ERT quantile needs more bootstrap streams than ERT (as alibi-detect says).
        self.n_bootstraps = n_bootstraps or int(2 * ert)
        if self.n_bootstraps <= ert:
            raise DetectorError("n_bootstraps must exceed ert")
        self.seed = seed
        self.threshold = float("nan")
        self._ref: F32 | None = None
        self._ref_sq: F32 = np.zeros(0, np.float32)
        self._ref_index: NDArray[np.int64] = np.zeros(0, np.int64)
        self._gamma = 1.0  # 1 / (2 sigma^2)
        self._c_rr = 0.0

    @property
    def fitted(self) -> bool:
        return self._ref is not None

    def _kernel(self, x: F32, x_sq: F32, y: F32, y_sq: F32) -> F32:
        d2 = x_sq[:, None] + y_sq[None, :] - 2.0 * (x @ y.T)
        out: F32 = np.exp(-self._gamma * np.maximum(d2, 0.0)).astype(np.float32)
        return out

    def fit(self, reference: F32) -> None:
        x = np.asarray(reference, dtype=np.float32)
        steps = self.window  # steps after the window first fills, to reach the steady level
        if x.ndim != 2 or len(x) < 2 * (self.window + steps):
            raise DetectorError(
                f"a drift reference needs at least {2 * (self.window + steps)} embeddings "
                f"for a window of {self.window}"
            )
        rng = np.random.default_rng(self.seed)
        order = rng.permutation(len(x))
        pool_idx, ref_idx = order[: len(x) // 2], order[len(x) // 2 :]
        ref, pool = x[ref_idx], x[pool_idx]
        ref_sq, pool_sq = _sq_norms(ref), _sq_norms(pool)
        # Median heuristic on a sample of reference pairs.
        sample = ref[rng.choice(len(ref), size=min(len(ref), 1000), replace=False)]
        s_sq = _sq_norms(sample)
        d2 = s_sq[:, None] + s_sq[None, :] - 2.0 * (sample @ sample.T)
        median = float(np.median(d2[np.triu_indices(len(sample), k=1)]))
        self._gamma = 1.0 / max(median, 1e-12)  # exp(-d^2 / median): sigma^2 = median / 2
        c_rr = 0.0
        for start in range(0, len(ref), _CHUNK):
            c_rr += float(
                self._kernel(
                    ref[start : start + _CHUNK], ref_sq[start : start + _CHUNK], ref, ref_sq
                ).sum(dtype=np.float64)
            )
        n = len(ref)
        self._c_rr = (c_rr - n) / (n * (n - 1))  # off the diagonal, where k(x, x) = 1
        self._ref, self._ref_sq, self._ref_index = ref, ref_sq, ref_idx.astype(np.int64)
        m_pool = np.concatenate(
            [
                self._kernel(pool[s : s + _CHUNK], pool_sq[s : s + _CHUNK], ref, ref_sq).mean(
                    axis=1
                )
                for s in range(0, len(pool), _CHUNK)
            ]
        ).astype(np.float64)
        k_pool = self._kernel(pool, pool_sq, pool, pool_sq).astype(np.float64)
        self.threshold = max(self._calibrate(k_pool, m_pool, steps, rng), MIN_THRESHOLD)

    def _calibrate(self, k_pool: F64, m_pool: F64, steps: int, rng: np.random.Generator) -> float:
        w, b = self.window, self.n_bootstraps
        length = w + steps
        stats = np.empty((b, steps + 1), dtype=np.float64)
        for start in range(0, b, _CHUNK):
            rows = min(_CHUNK, b - start)
            # Each stream: distinct pool points, as a real stream has no repeats.
            idx = np.stack(
                [rng.choice(len(m_pool), size=length, replace=False) for _ in range(rows)]
            )
            first = idx[:, :w]
            s = k_pool[first[:, :, None], first[:, None, :]].sum(axis=(1, 2)) - w
            m = m_pool[first].sum(axis=1)
            stats[start : start + rows, 0] = s / (w * (w - 1)) - 2.0 * m / w
            for t in range(1, steps + 1):
                old, new = idx[:, t - 1], idx[:, w + t - 1]
                keep = idx[:, t : w + t - 1]
                s += 2.0 * (
                    k_pool[new[:, None], keep].sum(axis=1) - k_pool[old[:, None], keep].sum(axis=1)
                )
                m += m_pool[new] - m_pool[old]
                stats[start : start + rows, t] = s / (w * (w - 1)) - 2.0 * m / w
        stats += self._c_rr
        # Per step, the level crossed with probability 1/ERT by streams that never crossed.
        alive = np.ones(b, dtype=bool)
        levels = []
        for t in range(steps + 1):
            level = float(np.quantile(stats[alive, t], 1.0 - 1.0 / self.ert))
            levels.append(level)
            alive &= stats[:, t] <= level
        # The steady part (the second half) averaged: each level rests on few streams.
        return float(np.mean(levels[len(levels) // 2 :]))

    def new_window(self) -> DriftWindow:
        if self._ref is None:
            raise NotFitted("the drift detector has no reference yet")
        return DriftWindow(self)

    def score(self, window: DriftWindow) -> DriftResult:
        count = window.count
        if count < self.window:
            return DriftResult(None, self.threshold, None, False, count)
        w = self.window
        stat = self._c_rr + window.s_sum / (w * (w - 1)) - 2.0 * window.m_sum / w
        return DriftResult(
            stat, self.threshold, stat / self.threshold, stat > self.threshold, count
        )

    def explain(self, window: DriftWindow, top: int = 5) -> DriftExplanation:
        if self._ref is None:
            raise NotFitted("the drift detector has no reference yet")
        recent = window.embeddings()
        if len(recent) == 0:
            return DriftExplanation([], [])
        k = self._kernel(self._ref, self._ref_sq, recent, _sq_norms(recent))
        least_like = np.argsort(k.mean(axis=1))[:top]
        farthest = np.argsort(window.ref_affinity())[:top]
        return DriftExplanation(
            [int(i) for i in self._ref_index[least_like]], [int(i) for i in farthest]
        )

    def state(self) -> dict[str, NDArray[np.generic]]:
        if self._ref is None:
            raise NotFitted("nothing to save before fit")
        params = np.array(
            [
                self.window,
                self.ert,
                self.n_bootstraps,
                self.seed,
                self.threshold,
                self._gamma,
                self._c_rr,
            ],
            dtype=np.float64,
        )
        return {"ref": self._ref, "ref_index": self._ref_index, "params": params}

    @classmethod
    def from_state(cls, state: dict[str, NDArray[np.generic]]) -> MmdDrift:
        window, ert, n_boot, seed, threshold, gamma, c_rr = (float(v) for v in state["params"])
        detector = cls(window=int(window), ert=ert, n_bootstraps=int(n_boot), seed=int(seed))
        detector._ref = np.asarray(state["ref"], dtype=np.float32)
        detector._ref_sq = _sq_norms(detector._ref)
        detector._ref_index = np.asarray(state["ref_index"], dtype=np.int64)
        detector.threshold, detector._gamma, detector._c_rr = threshold, gamma, c_rr
        detector.threshold = max(threshold, MIN_THRESHOLD)  # saved before the floor existed
        return detector


class DriftWindow:
    """The recent `window` embeddings and the running kernel sums over them. Bounded: the
    embeddings, their affinity to the reference and their kernel matrix, nothing more."""

    def __init__(self, detector: MmdDrift) -> None:
        assert detector._ref is not None
        self._detector = detector
        w, dim = detector.window, detector._ref.shape[1]
        self._emb = np.zeros((w, dim), dtype=np.float32)
        self._sq = np.zeros(w, dtype=np.float32)
        self._m = np.zeros(w, dtype=np.float64)  # mean kernel to the reference, per slot
        self._k = np.zeros((w, w), dtype=np.float64)  # kernel among slots, zero diagonal
        self._next = 0
        self.count = 0
        self.s_sum = 0.0  # sum of k over ordered pairs of distinct window members
        self.m_sum = 0.0

    def add(self, batch: F32) -> None:
        """Slide the window over new embeddings, oldest first."""
        d = self._detector
        assert d._ref is not None
        x = np.asarray(batch, dtype=np.float32).reshape(-1, d._ref.shape[1])
        if len(x) == 0:
            return
        x_sq = _sq_norms(x)
        m_new = d._kernel(x, x_sq, d._ref, d._ref_sq).mean(axis=1, dtype=np.float64)
        w = d.window
        for i in range(len(x)):
            slot = self._next
            if self.count == w:  # evict the oldest, which sits in this slot
                self.s_sum -= 2.0 * float(self._k[slot].sum())
                self.m_sum -= float(self._m[slot])
            else:
                self.count += 1
            row = d._kernel(x[i : i + 1], x_sq[i : i + 1], self._emb, self._sq)[0]
            row = row.astype(np.float64)
            live = np.zeros(w, dtype=bool)
            live[: self.count] = True  # slots in use once filled in order
            live[slot] = False
            row[~live] = 0.0
            self._k[slot, :] = row
            self._k[:, slot] = row
            self._emb[slot], self._sq[slot], self._m[slot] = x[i], x_sq[i], m_new[i]
            self.s_sum += 2.0 * float(row.sum())
            self.m_sum += float(m_new[i])
            self._next = (slot + 1) % w

    def copy(self) -> DriftWindow:
        """An independent window with the same contents (its arrays copied)."""
        other = copy.copy(self)
        other._emb, other._sq = self._emb.copy(), self._sq.copy()
        other._m, other._k = self._m.copy(), self._k.copy()
        return other

    def _order(self) -> NDArray[np.int64]:
        w = self._detector.window
        if self.count < w:
            return np.arange(self.count)
        return (np.arange(w) + self._next) % w

    def embeddings(self) -> F32:
        """The window's embeddings, oldest first."""
        return self._emb[self._order()]

    def ref_affinity(self) -> F64:
        """Mean kernel to the reference of each window embedding, oldest first."""
        return self._m[self._order()]

    def state(self) -> dict[str, NDArray[np.generic]]:
        counters = np.array([self._next, self.count, self.s_sum, self.m_sum], dtype=np.float64)
        return {"emb": self._emb, "sq": self._sq, "m": self._m, "k": self._k, "counters": counters}

    @classmethod
    def from_state(cls, detector: MmdDrift, state: dict[str, NDArray[np.generic]]) -> DriftWindow:
        window = cls(detector)
        window._emb = np.array(state["emb"], dtype=np.float32)
        window._sq = np.array(state["sq"], dtype=np.float32)
        window._m = np.array(state["m"], dtype=np.float64)
        window._k = np.array(state["k"], dtype=np.float64)
        nxt, count, s_sum, m_sum = (float(v) for v in state["counters"])
        window._next, window.count, window.s_sum, window.m_sum = int(nxt), int(count), s_sum, m_sum
        return window
