"""Sliding-window service metrics per app and model, in bounded memory.

Time is cut into fixed buckets (10 s by default). Each (app, model) cell keeps one bucket per
slot of the longest window: committed counters plus t-digests (fastdigest, mergeable), and the
open `Partial` of records counted since the store's last commit group (partials.py). The
per-record path touches exactly one partial; `take_open`, run as the store closes a group,
folds the open partials into their buckets and hands them to the store. A window query merges
the buckets it covers, open partials included; per-app, per-model and overall series are
merged from the cells at query time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from itertools import chain
from typing import TYPE_CHECKING

from fastdigest import TDigest

from lookout.monitor.metrics.labels import LabelFolder
from lookout.monitor.metrics.partials import (
    MINUTE_S,
    SPILL_AT,
    Partial,
    add_counts,
    new_digest,
)
from lookout.monitor.metrics.window_stats import WindowStats
from lookout.series import ALL, OTHER, SERIES_NAMES, SeriesPoint

if TYPE_CHECKING:
    from lookout.monitor.storage.base import PartialRow

# ALL, OTHER and SERIES_NAMES live in the series catalogue; they are named here too for the
# modules that read them beside the windows.
__all__ = [
    "ALL",
    "OTHER",
    "SERIES_NAMES",
    "LabelFolder",
    "WindowStats",
    "WindowedMetrics",
    "stats_by_scope",
]


class _Bucket:
    __slots__ = (
        "cost",
        "count",
        "errors",
        "gen_tps",
        "index",
        "latency_s",
        "open",
        "output_tokens",
        "token_records",
        "tokens",
        "ttft_s",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.count = 0
        self.errors = 0
        self.output_tokens = 0
        self.tokens = 0
        self.token_records = 0
        self.cost = 0.0
        self.latency_s: TDigest | None = None
        self.ttft_s: TDigest | None = None
        self.gen_tps: TDigest | None = None
        self.open: Partial | None = None  # counted since the last commit group closed

    def fold(self, part: Partial) -> None:
        """Add a partial's counts and values to the committed ones."""
        add_counts(self, part)
        latency, ttft, gen = part.digests()
        self.latency_s = _merged(self.latency_s, latency)
        self.ttft_s = _merged(self.ttft_s, ttft)
        self.gen_tps = _merged(self.gen_tps, gen)


def _merged(held: TDigest | None, more: TDigest | None) -> TDigest | None:
    if more is None:
        return held
    if held is None:
        return more
    held.merge_inplace(more)
    return held


class _Cell:
    __slots__ = ("buckets", "current")

    def __init__(self, slots: int) -> None:
        self.buckets: list[_Bucket | None] = [None] * slots
        self.current: _Bucket | None = None


class _Acc:
    """Merges buckets of one scope."""

    __slots__ = ("cost", "count", "errors", "gen", "lat", "out", "tok", "tokrec", "ttft")

    def __init__(self) -> None:
        self.count = 0
        self.errors = 0
        self.out = 0
        self.tok = 0
        self.tokrec = 0
        self.cost = 0.0
        self.lat = new_digest()
        self.ttft = new_digest()
        self.gen = new_digest()

    def add(self, b: _Bucket | Partial) -> None:
        self.count += b.count
        self.errors += b.errors
        self.out += b.output_tokens
        self.tok += b.tokens
        self.tokrec += b.token_records
        self.cost += b.cost
        digests = b.digests() if isinstance(b, Partial) else (b.latency_s, b.ttft_s, b.gen_tps)
        for mine, theirs in zip((self.lat, self.ttft, self.gen), digests, strict=True):
            if theirs is not None:
                mine.merge_inplace(theirs)
        if isinstance(b, _Bucket) and b.open is not None:
            self.add(b.open)  # the uncommitted tail

    def stats(self, app: str, model: str, duration_s: float) -> WindowStats:
        def q(d: TDigest, p: float) -> float | None:
            return None if d.is_empty() else float(d.quantile(p))

        duration_s = max(duration_s, 1.0)  # no rate explosions in the first second
        return WindowStats(
            app=app,
            model=model,
            count=self.count,
            errors=self.errors,
            qps=self.count / duration_s,
            tps=self.out / duration_s,
            error_rate=self.errors / self.count if self.count else None,
            latency_p50=q(self.lat, 0.5),
            latency_p95=q(self.lat, 0.95),
            latency_p99=q(self.lat, 0.99),
            ttft_p95=q(self.ttft, 0.95),
            gen_tps_p50=q(self.gen, 0.5),
            tokens_per_request=self.tok / self.tokrec if self.tokrec else None,
            cost_per_hour=self.cost / duration_s * 3600.0,
        )


class WindowedMetrics:
    """Bounded sliding windows. Not thread-safe: owned by the ingest loop."""

    def __init__(
        self,
        *,
        bucket_s: float = 10.0,
        max_window_s: float = 900.0,
        max_apps: int = 50,
        max_models: int = 50,
        max_cells: int = 500,
        started_at: float = 0.0,
        pinned_apps: Iterable[str] = (),
        reclaim_after_s: float | None = None,
    ) -> None:
        self.bucket_s = bucket_s
        self.max_window_s = max_window_s
        self._slots = math.ceil(max_window_s / bucket_s) + 1
        self.apps = LabelFolder(max_apps, pinned_apps)
        # An app unseen this long gives its slot to one waiting in `other` (default: the window).
        self.reclaim_after_s = max_window_s if reclaim_after_s is None else reclaim_after_s
        self.models = LabelFolder(max_models)
        self._max_cells = max_cells
        self._cells: dict[tuple[str, str], _Cell] = {}
        self._folded: dict[tuple[str, str], tuple[str, str]] = {}
        self._open: list[tuple[tuple[str, str], _Bucket]] = []  # buckets with an open partial
        # Told which apps gave their slot back, so per-app state elsewhere (the Prometheus
        # totals) does not grow with every app that ever held one.
        self.on_release: list[Callable[[list[str]], None]] = []
        self.started_at = started_at

    def labels_for(self, app: str, model: str) -> tuple[str, str]:
        """The bounded label pair a record's (app, model) is counted under."""
        raw = (app, model)
        key = self._folded.get(raw)
        if key is None:
            key = (self.apps.fold(app), self.models.fold(model))
            full = len(self._cells) >= self._max_cells and app not in self.apps.pinned
            if full and key not in self._cells:
                key = (OTHER, OTHER)
            if len(self._folded) < self._max_cells * 4:
                self._folded[raw] = key
        return key

    def observe(  # noqa: PLR0917 - positional on the hot path: keywords cost ~1 us here
        self,
        key: tuple[str, str],
        now: float,
        error: bool,
        latency_ms: float | None,
        ttft_ms: float | None,
        input_tokens: int | None,
        output_tokens: int | None,
        cost: float,
        /,
    ) -> None:
        """Count one record at `now` under folded labels `key`, in its bucket's open partial."""
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell(self._slots)
        index = int(now // self.bucket_s)
        bucket = cell.current
        if bucket is None or bucket.index != index:
            bucket = self._bucket(cell, index)
        part = bucket.open
        if part is None:
            part = bucket.open = Partial()
            self._open.append((key, bucket))
        part.count += 1
        if error:
            part.errors += 1
        if latency_ms is not None:
            part.latency_s.append(latency_ms / 1000.0)
        if ttft_ms is not None:
            part.ttft_s.append(ttft_ms / 1000.0)
        part.cost += cost
        if input_tokens is not None or output_tokens is not None:
            tout = output_tokens or 0
            part.tokens += (input_tokens or 0) + tout
            part.token_records += 1
            part.output_tokens += tout
            if tout and latency_ms:
                # Output tokens over the time after the first token.
                gen_ms = latency_ms - ttft_ms if ttft_ms and latency_ms > ttft_ms else latency_ms
                tps = tout / (gen_ms / 1000.0)
                if tps < math.inf:  # a latency of 1e-320 ms would make it infinite
                    part.gen_tps.append(tps)
        if part.count % SPILL_AT == 0:
            part.spill()  # bounded when no store takes the partials

    def take_open(self) -> list[tuple[str, str, int, Partial]]:
        """Fold every open partial into its bucket and hand them over, with their minute:
        what the commit group being closed adds to the stored minutes."""
        taken = []
        for (app, model), bucket in self._open:
            part = bucket.open
            if part is None:
                continue
            bucket.open = None
            bucket.fold(part)
            minute = int(bucket.index * self.bucket_s // MINUTE_S) * MINUTE_S
            taken.append((app, model, minute, part))
        self._open = []
        return taken

    def merge_partial(self, raw: tuple[str, str], at: float, part: PartialRow) -> None:
        """Add a committed aggregate (a stored minute, after a restart) to the bucket at `at`."""
        key = self.labels_for(*raw)
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = _Cell(self._slots)
        bucket = self._bucket(cell, int(at // self.bucket_s))
        add_counts(bucket, part)
        for name in ("latency_s", "ttft_s", "gen_tps"):
            blob = getattr(part, name)
            if blob is not None:
                held = getattr(bucket, name) or new_digest()
                setattr(bucket, name, held.merge(TDigest.from_bytes(blob)))
        self.started_at = min(self.started_at, at)

    def _bucket(self, cell: _Cell, index: int) -> _Bucket:
        slot = index % self._slots
        bucket = cell.buckets[slot]
        if bucket is None or bucket.index != index:
            if bucket is not None and bucket.index > index:
                # A record older than the ring (replay out of order): count it in the oldest
                # bucket we still hold rather than overwrite newer data.
                return bucket
            bucket = cell.buckets[slot] = _Bucket(index)
        if cell.current is None or index >= cell.current.index:
            cell.current = bucket
        return bucket

    def query(
        self, window_s: float, now: float, where: Mapping[str, str] | None = None
    ) -> list[WindowStats]:
        """Stats for every scope over the window ending at `now`."""
        window_s = min(window_s, self.max_window_s)
        # Up to the end of the bucket holding `now`, so a record stamped `now` is in.
        end = (math.floor(now / self.bucket_s) + 1) * self.bucket_s
        return self.range(now - window_s, end, now, where)

    def range(
        self,
        start: float,
        end: float,
        now: float,
        where: Mapping[str, str] | None = None,
        also: Iterable[WindowedMetrics] = (),
    ) -> list[WindowStats]:
        """Stats over buckets whose start lies in [start, end): per cell, app, model, all;
        `also`: windows of the same bucket size whose buckets are merged in (other nodes')."""
        first = math.ceil(start / self.bucket_s - 1e-9)
        last = math.ceil(end / self.bucket_s - 1e-9) - 1
        began = min([self.started_at, *(w.started_at for w in also)])
        duration = max(min(end, now) - max(first * self.bucket_s, began), 0.0)
        scopes: dict[tuple[str, str], _Acc] = {}
        for (app, model), cell in chain(self._cells.items(), *(w._cells.items() for w in also)):
            if where and not _matches(where, app, model):
                continue
            buckets = [b for b in cell.buckets if b is not None and first <= b.index <= last]
            if not buckets:
                continue
            for scope in ((app, model), (app, ALL), (ALL, model), (ALL, ALL)):
                acc = scopes.get(scope)
                if acc is None:
                    acc = scopes[scope] = _Acc()
                for b in buckets:
                    acc.add(b)
        return [acc.stats(app, model, duration) for (app, model), acc in scopes.items()]

    def points(self, window_s: float, now: float) -> list[SeriesPoint]:
        """Every scope's series over the window ending at `now`, as points."""
        return [p for stats in self.query(window_s, now) for p in stats.points()]

    def prune(self, now: float) -> None:
        """Forget cells with no bucket left inside the longest window; give the slots of apps
        gone quiet to apps waiting in `other`."""
        oldest = int((now - self.max_window_s) // self.bucket_s)
        for key in [k for k, c in self._cells.items() if not _live(c, oldest)]:
            del self._cells[key]
        if self.apps.waiting:
            self.reclaim(now)

    def reclaim(self, now: float) -> list[str]:
        """Release the least recently seen apps idle for `reclaim_after_s`, one per app
        waiting in `other`; returns them."""
        last_seen: dict[str, int] = dict.fromkeys(self.apps.holding(), -1)
        for (app, _), cell in self._cells.items():
            if app in last_seen and cell.current is not None:
                last_seen[app] = max(last_seen[app], cell.current.index)
        idle_before = (now - self.reclaim_after_s) / self.bucket_s - 1
        idle = sorted((seen, app) for app, seen in last_seen.items() if seen < idle_before)
        released = [app for _, app in idle[: self.apps.waiting]]
        if released:
            self.apps.release(released)
            self._folded.clear()  # apps folded into `other` get a fresh look
            for forget in self.on_release:
                forget(released)
        return released

    def cell_count(self) -> int:
        return len(self._cells)


def _live(cell: _Cell, oldest: int) -> bool:
    return any(b is not None and b.index >= oldest for b in cell.buckets)


def _matches(where: Mapping[str, str], app: str, model: str) -> bool:
    return where.get("app", app) == app and where.get("model", model) == model


def stats_by_scope(stats: Iterable[WindowStats]) -> dict[tuple[str, str], WindowStats]:
    return {(s.app, s.model): s for s in stats}
