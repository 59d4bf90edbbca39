"""The rollup service on a fake clock: each completed minute written once, and the charts'
stored/live boundary moved only once the store has flushed what was written."""

from __future__ import annotations

import asyncio
from pathlib import Path

from lookout.clock import FakeClock
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.metrics.engagement import EngagementWindows
from lookout.monitor.metrics.rollups import SETTLE_S, RollupService
from lookout.monitor.storage import RollupPoint, Store
from lookout.series import SeriesPoint

T0 = 1_700_000_040  # on a minute boundary


class HeldFlush:
    """The real store, counting the rollup rows it is given; a flush waits for `release`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.rows: list[tuple[int, str, str, str]] = []
        self.flushing = asyncio.Event()
        self.release = asyncio.Event()

    def put_rollups(self, points: list[RollupPoint]) -> None:
        self.rows += [(p.minute, p.app, p.model, p.series) for p in points]
        self.store.put_rollups(points)

    async def flush(self) -> None:
        self.flushing.set()
        await self.release.wait()
        self.flushing.clear()
        await self.store.flush()


class Ticks:
    """A sleep that reports how long it was asked for and advances the clock when let go."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.asked: asyncio.Queue[float] = asyncio.Queue()
        self.go: asyncio.Queue[None] = asyncio.Queue()

    async def sleep(self, seconds: float) -> None:
        await self.asked.put(seconds)
        await self.go.get()
        self.clock.advance(seconds)


def judge_series(window_s: float, now: float) -> list[SeriesPoint]:
    return [SeriesPoint("judge_pass_rate", (("app", "bot"),), 0.75, 4)]


async def test_completed_minutes_are_written_once_and_shown_stored_only_after_the_flush(
    tmp_path: Path,
) -> None:
    clock = FakeClock(T0 + 10.0)
    settings = Settings.model_validate(
        {"store": {"url": f"sqlite:///{tmp_path}/r.db"}, "api": {"bind": "127.0.0.1:0"}}
    )
    d = Daemon(settings, clock=clock)
    held, ticks = HeldFlush(d.store), Ticks(clock)
    rollups = RollupService(d.windows, held, clock, extra_series=judge_series, sleep=ticks.sleep)
    async with d.store:
        d.pipeline.process_payload(b'{"app": "bot", "latency_ms": 200}', None, "mqtt", clock.now())
        task = asyncio.create_task(rollups.run())
        try:
            assert await ticks.asked.get() == 60 - 10 + SETTLE_S  # a little past the minute
            await ticks.go.put(None)
            await asyncio.wait_for(held.flushing.wait(), 5)
            # The minute is written but not flushed: the charts still take it from the windows.
            assert {r[0] for r in held.rows} == {T0}
            assert rollups.stored_minute == T0
            held.release.set()
            assert await ticks.asked.get() == 60.0
            assert rollups.stored_minute == T0 + 60
            stored = await d.store.rollups(T0, app="bot", series="qps")
            assert [(p.minute, p.model) for p in stored] == [(T0, "*"), (T0, "unknown")]
            assert (T0, "bot", "*", "judge_pass_rate") in held.rows
            await ticks.go.put(None)  # the next minute, with no records in it
            assert await ticks.asked.get() == 60.0
            assert rollups.stored_minute == T0 + 120
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert len(held.rows) == len(set(held.rows))  # no row written twice, the last one included
    assert (T0 + 60, "bot", "*", "judge_pass_rate") in held.rows


async def test_minutes_committed_before_a_crash_are_rolled_up_after_the_restart(
    tmp_path: Path,
) -> None:
    clock = FakeClock(T0 + 10.0)
    settings = Settings.model_validate(
        {"store": {"url": f"sqlite:///{tmp_path}/r.db"}, "api": {"bind": "127.0.0.1:0"}}
    )
    first = Daemon(settings, clock=clock)
    async with first.store:
        for _ in range(6):
            first.pipeline.process_payload(b'{"app": "bot"}', None, "mqtt", clock.now())
        await first.store.flush()  # committed; the process dies before the minute's rollup
    clock.advance(120)
    second = Daemon(settings, clock=clock)
    async with second.store:
        await second.pipeline.restore()
        resume = await second._first_minute_not_rolled_up()
        assert resume == T0
        RollupService(second.windows, second.store, clock, resume_from=resume).write(clock.now())
        await second.store.flush()
        qps = await second.store.rollups(T0, app="bot", series="qps")
    assert [(p.minute, p.model, p.value) for p in qps] == [
        (T0, "*", 0.1),  # 6 records in the minute
        (T0, "unknown", 0.1),
    ]


def test_a_series_per_model_also_gets_a_row_over_all_models_for_the_charts(
    tmp_path: Path,
) -> None:
    """The charts read rows over all models: a shadow model's preference (per production
    model) gets one too, weighted by each model's pairs."""

    def evals(window_s: float, now: float) -> list[SeriesPoint]:
        pair = (("app", "bot"), ("model", "a"), ("shadow_model", "next"))
        return [
            SeriesPoint("judge_preference", pair, 1.0, 3),
            SeriesPoint("judge_preference", (*pair[:1], ("model", "b"), pair[2]), -1.0, 1),
            SeriesPoint("judge_pass_rate", (("app", "bot"),), 0.75, 4),
        ]

    settings = Settings.model_validate({"store": {"url": f"sqlite:///{tmp_path}/r.db"}})
    d = Daemon(settings, clock=FakeClock(T0))
    rows = RollupService(d.windows, d.store, d.clock, extra_series=evals).extra_points(T0, T0)
    assert sorted((p.model, p.series, p.value) for p in rows) == [
        ("*", "judge_pass_rate", 0.75),
        ("*", "judge_preference:next", 0.5),
        ("a", "judge_preference:next", 1.0),
        ("b", "judge_preference:next", -1.0),
    ]


class Rows:
    def __init__(self) -> None:
        self.points: list[RollupPoint] = []

    def put_rollups(self, points: list[RollupPoint]) -> None:
        self.points += points

    async def flush(self) -> None:
        pass


def test_a_completed_minutes_engagement_row_counts_that_minute_not_the_next_ones_start(
    tmp_path: Path,
) -> None:
    """Rolled up a few seconds after the minute ends, the row holds the minute's 30 users,
    not the 1 user of the new minute's first seconds."""
    engagement = EngagementWindows(bucket_s=60.0, max_window_s=3600.0)
    for i in range(30):
        engagement.observe("bot", f"user-{i}", None, T0 + i)
    engagement.observe("bot", "early-bird", None, T0 + 61)
    settings = Settings.model_validate({"store": {"url": f"sqlite:///{tmp_path}/r.db"}})
    d = Daemon(settings, clock=FakeClock(T0 + 30))  # the service starts in the minute
    rows = Rows()
    RollupService(d.windows, rows, d.clock, extra_series=engagement.points).write(T0 + 62)
    users = [(p.minute, p.value) for p in rows.points if p.series == "active_users"]
    assert users == [(T0, 30.0)]
