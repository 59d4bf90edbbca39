"""Cluster-wide series: this node's live windows merged with the other nodes' committed
minutes.

Every node commits its per-(minute, app, model) partial aggregates under its own `node.id`
(storage/pg_groups.py). A node's own windows hold its committed buckets and its uncommitted
tail at bucket resolution; `ClusterWindows` adds the other nodes' rows, read with one bounded
query every `cluster.refresh_interval` (the current and previous minute; the whole window
once a minute, for late commits) and cached as windows of their own. A query merges the two
bucket by bucket (t-digests merge), so this node's rows are never counted twice and a rule on
`latency_p95` sees the whole cluster's traffic. The other nodes' rows are minutes, so a
cluster-wide window starts on a minute boundary: up to a minute longer than asked, the same
span for every node's share, which keeps rates right.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType

import structlog

from lookout.clock import Clock
from lookout.errors import StoreError
from lookout.monitor.metrics.partials import MINUTE_S
from lookout.monitor.metrics.window_stats import WindowStats
from lookout.monitor.metrics.windows import WindowedMetrics
from lookout.monitor.storage.base import PartialRow
from lookout.monitor.storage.nodes import ClusterStore
from lookout.series import SeriesPoint

log = structlog.get_logger(__name__)
Sleep = Callable[[float], Awaitable[None]]
# Past a minute's end before the refresh that the rollup of that minute reads (rollups.py
# rolls up 2 s after it): the other nodes commit within their flush interval.
_AFTER_MINUTE_S = 1.0
_FULL_EVERY = 12  # refreshes between two reads of the whole window


class ClusterWindows:
    """The windows' queries over the whole cluster. Not thread-safe: owned by the loop."""

    def __init__(
        self,
        local: WindowedMetrics,
        store: ClusterStore,
        clock: Clock,
        new_windows: Callable[[], WindowedMetrics],
        *,
        node: str,
        refresh_interval_s: float = 5.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`new_windows`: empty windows shaped like `local` (the other nodes' go in one)."""
        self.local = local
        self._store = store
        self._clock = clock
        self._new_windows = new_windows
        self._node = node
        self._interval_s = refresh_interval_s
        self._sleep = sleep
        self._rows: dict[tuple[int, str, str], PartialRow] = {}
        self._peers = new_windows()
        self._refreshes = 0
        self._tasks = asyncio.TaskGroup()
        self._loop: asyncio.Task[None] | None = None

    @property
    def max_window_s(self) -> float:
        return self.local.max_window_s

    async def __aenter__(self) -> ClusterWindows:
        await self.refresh()
        await self._tasks.__aenter__()
        self._loop = self._tasks.create_task(self._run(), name="cluster-windows")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None:
            self._loop.cancel()
        await self._tasks.__aexit__(exc_type, exc, tb)

    async def _run(self) -> None:
        while True:
            now = self._clock.now()
            after_minute = math.floor(now / MINUTE_S) * MINUTE_S + MINUTE_S + _AFTER_MINUTE_S
            await self._sleep(max(0.0, min(self._interval_s, after_minute - now)))
            await self.refresh()

    async def refresh(self) -> None:
        """Re-read the other nodes' recent minutes (all of the window now and then)."""
        now = self._clock.now()
        oldest = math.floor((now - self.max_window_s) / MINUTE_S) * MINUTE_S
        full = self._refreshes % _FULL_EVERY == 0
        since = oldest if full else math.floor(now / MINUTE_S) * MINUTE_S - MINUTE_S
        try:
            rows = await self._store.peer_partials(since)
            nodes = await self._store.nodes()
        except StoreError as exc:
            log.warning("cluster_refresh_failed", error=str(exc))
            return
        self._refreshes += 1
        kept = {k: r for k, r in self._rows.items() if oldest <= k[0] < since}
        kept.update({(r.minute, r.app, r.model): r for r in rows})
        self._rows = kept
        peers = self._new_windows()
        for row in kept.values():
            peers.merge_partial((row.app, row.model), float(row.minute), row)
        # Rates divide by the time since the data began: the other nodes' minutes stand for
        # the time since the first of them started, not since the start of its minute.
        started = [n.started_at for n in nodes if n.node != self._node]
        if started and math.isfinite(peers.started_at):
            peers.started_at = max(peers.started_at, min(started))
        self._peers = peers

    def peer_minutes(self) -> int:
        """How many (minute, app, model) of the other nodes are cached."""
        return len(self._rows)

    def range(
        self, start: float, end: float, now: float, where: Mapping[str, str] | None = None
    ) -> list[WindowStats]:
        """Stats over [start, end) of every node (`start` and `end` on minute boundaries,
        as rollups ask, or the other nodes' minutes count whole)."""
        return self.local.range(start, end, now, where, also=(self._peers,))

    def query(
        self, window_s: float, now: float, where: Mapping[str, str] | None = None
    ) -> list[WindowStats]:
        """Every node's stats over the window ending at `now`, from the minute it starts in
        (the next one when that is older than the windows hold)."""
        window_s = min(window_s, self.max_window_s)
        start = math.floor((now - window_s) / MINUTE_S) * MINUTE_S
        if start < now - self.max_window_s:
            start += MINUTE_S
        end = (math.floor(now / self.local.bucket_s) + 1) * self.local.bucket_s
        return self.range(start, end, now, where)

    def points(self, window_s: float, now: float) -> list[SeriesPoint]:
        return [p for stats in self.query(window_s, now) for p in stats.points()]

    def prune(self, now: float) -> None:
        self.local.prune(now)
