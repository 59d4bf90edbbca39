"""Per-minute rollups: the charts' history.

Every completed minute's window statistics (and the detectors' and the judge's series, which
have no history to replay: their value at the minute's end) are written to the store once. The
charts read stored minutes from the store and the rest from the live windows; the boundary
between the two moves only once the store has flushed what was written, so a minute is never
missing from both nor counted twice.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Protocol

from lookout.clock import Clock
from lookout.monitor.metrics.windows import ALL, WindowStats
from lookout.monitor.storage import RollupPoint
from lookout.series import SeriesPoint

ROLLUP_S = 60
# Past the minute's end before rolling it up, so records stamped at its end are in.
SETTLE_S = 2.0
SeriesFn = Callable[[float, float], list[SeriesPoint]]
_JUST_BEFORE_S = 1e-3  # (window_s, now) -> points
Sleep = Callable[[float], Awaitable[None]]


class RollupWindows(Protocol):
    """The windows rollups read: a node's own (WindowedMetrics) or the cluster's."""

    @property
    def max_window_s(self) -> float: ...

    def range(self, start: float, end: float, now: float) -> list[WindowStats]: ...

    def prune(self, now: float) -> None: ...


class RollupSink(Protocol):
    """The part of the store rollups need."""

    def put_rollups(self, points: list[RollupPoint]) -> None: ...

    async def flush(self) -> None: ...


def no_series(window_s: float, now: float) -> list[SeriesPoint]:
    return []


def rollup_points(stats: list[WindowStats], minute: int) -> list[RollupPoint]:
    return [
        RollupPoint(minute, s.app, s.model, name, value)
        for s in stats
        for name, value in s.series().items()
        if value is not None
    ]


class RollupService:
    def __init__(
        self,
        windows: RollupWindows,
        store: RollupSink,
        clock: Clock,
        *,
        extra_series: SeriesFn = no_series,
        sleep: Sleep = asyncio.sleep,
        resume_from: int | None = None,
    ) -> None:
        """`resume_from`: the first minute with no stored rollup, after a restart: the
        minutes from there were committed as partial aggregates (and seeded into the windows)
        but not rolled up before the process stopped, so they are rolled up now."""
        self._windows = windows
        self._store = store
        self._clock = clock
        self._extra_series = extra_series
        self._sleep = sleep
        self._written_until = int(clock.now() // ROLLUP_S) * ROLLUP_S
        if resume_from is not None:
            self._written_until = min(self._written_until, resume_from)
        self._stored_until = self._written_until

    @property
    def stored_minute(self) -> int:
        """The first minute whose rollups are not known to be in the store: charts take it
        and what follows from the live windows."""
        return self._stored_until

    async def run(self) -> None:
        """Roll up every minute a little after it ends; on the way out, write the minutes
        completed so far (the store flushes them when it closes)."""
        try:
            while True:
                now = self._clock.now()
                await self._sleep(math.ceil(now / ROLLUP_S) * ROLLUP_S - now + SETTLE_S)
                await self.roll_up()
        finally:
            self.write(self._clock.now())

    async def roll_up(self) -> None:
        """Write the completed minutes' rollups and, once the store has them, move the charts'
        boundary between stored and live minutes."""
        self.write(self._clock.now())
        written = self._written_until
        await self._store.flush()
        self._stored_until = max(self._stored_until, written)

    def write(self, now: float) -> int:
        """Buffer the rollups of every minute completed since the last call; how many rows."""
        complete = int(now // ROLLUP_S) * ROLLUP_S
        # Minutes older than the longest window hold no data any more (after a long pause).
        oldest = complete - int(self._windows.max_window_s // ROLLUP_S) * ROLLUP_S
        minute = max(self._written_until, oldest)
        written = 0
        while minute < complete:
            points = rollup_points(self._windows.range(minute, minute + ROLLUP_S, now), minute)
            self._store.put_rollups(points)
            written += len(points)
            minute += ROLLUP_S
        if self._written_until < complete:
            # The detector and judge series have no history to replay: their value now stands
            # for the minute just completed. Read as of that minute's end: series kept in
            # minute buckets (engagement, tools, feedback) count the buckets that start within
            # the window, and at `now` a minute's window would hold the new minute's first
            # seconds instead of the completed one.
            points = self.extra_points(complete - ROLLUP_S, min(now, complete - _JUST_BEFORE_S))
            self._store.put_rollups(points)
            written += len(points)
        self._written_until = max(minute, complete)
        self._windows.prune(now)
        return written

    def extra_points(self, minute: int, now: float) -> list[RollupPoint]:
        """The detector and judge series as rollup rows (over all models unless the series
        has a model); a labelled series' row name carries the label: drift_score:prompt,
        judge_score:helpfulness, judge_preference:<shadow model>,
        feedback_score:thumbs, tool_error_rate:search. A series per model also gets a row
        over all models (the mean weighted by each model's count), the one charts read."""
        out = []
        over_models: dict[tuple[str, str], list[float]] = {}
        for p in self._extra_series(ROLLUP_S, now):
            if p.value is None:
                continue
            labels = dict(p.labels)
            name = p.metric + "".join(
                f":{labels[k]}"
                for k in ("field", "criterion", "method", "shadow_model", "key", "tool")
                if k in labels
            )
            model = labels.get("model", ALL)
            app = labels.get("app", ALL)
            out.append(RollupPoint(minute, app, model, name, p.value))
            if model != ALL:
                acc = over_models.setdefault((app, name), [0.0, 0.0])
                acc[0] += p.value * max(p.count, 1)
                acc[1] += max(p.count, 1)
        known = {(p.app, p.series) for p in out if p.model == ALL}
        out += [
            RollupPoint(minute, app, ALL, name, total / weight)
            for (app, name), (total, weight) in over_models.items()
            if (app, name) not in known
        ]
        return out

    def live_points(self, now: float, since: float) -> list[RollupPoint]:
        """The minutes from `since` (not yet in the store) to the one under way, from the live
        windows, as rollup rows for charts that end now. The detector and judge series have no
        history: only the minute under way has them."""
        minute = int(now // ROLLUP_S) * ROLLUP_S
        first = max(int(since), minute - int(self._windows.max_window_s // ROLLUP_S) * ROLLUP_S)
        points = []
        for start in range(first, minute + 1, ROLLUP_S):
            points += rollup_points(self._windows.range(start, start + ROLLUP_S, now), start)
        return points + self.extra_points(minute, now)
