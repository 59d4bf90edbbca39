"""The judge's schedule: an APScheduler trigger from the config, its period, and its ticks.

Every node of a cluster must name a tick alike (a scheduled run's key is its tick), so an
interval schedule counts from the epoch, not from the daemon's start: `interval: 15m` fires at
:00, :15, :30 and :45 UTC on every node. A cron schedule is on the clock already.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

    from lookout.monitor.config import JudgeConfig

DAY_S = 86_400.0


def build_trigger(cfg: JudgeConfig) -> BaseTrigger:
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if cfg.schedule.cron is not None:
        return CronTrigger.from_crontab(cfg.schedule.cron)
    assert cfg.schedule.interval is not None
    return IntervalTrigger(
        seconds=cfg.schedule.interval, start_date=datetime.fromtimestamp(0, UTC), timezone=UTC
    )


def period_s(trigger: BaseTrigger, now: float) -> float:
    """The gap between the next two fires (a cron schedule's gaps may differ)."""
    start = datetime.fromtimestamp(now, UTC)
    first = trigger.get_next_fire_time(None, start)
    second = trigger.get_next_fire_time(first, first) if first is not None else None
    if first is None or second is None:
        return DAY_S
    return max(float((second - first).total_seconds()), 1.0)


def tick_at(trigger: BaseTrigger, now: float) -> float:
    """The latest fire time at or before `now` (a fire a little late names its own tick); `now`
    itself when the schedule never fired before it."""
    at = datetime.fromtimestamp(now, UTC)
    span = timedelta(seconds=period_s(trigger, now))
    for _ in range(32):  # the span doubles: a cron schedule's gaps may be long
        fire = trigger.get_next_fire_time(None, at - span)
        latest = None
        while fire is not None and fire <= at:
            latest = fire
            fire = trigger.get_next_fire_time(fire, fire)
        if latest is not None:
            return float(latest.timestamp())
        span *= 2
    return now
