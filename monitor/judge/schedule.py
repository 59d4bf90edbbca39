"""The judge's schedule: an APScheduler trigger from the config, and its period."""

from __future__ import annotations

from datetime import UTC, datetime
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
    return IntervalTrigger(seconds=cfg.schedule.interval)


def period_s(trigger: BaseTrigger, now: float) -> float:
    """The gap between the next two fires (a cron schedule's gaps may differ)."""
    start = datetime.fromtimestamp(now, UTC)
    first = trigger.get_next_fire_time(None, start)
    second = trigger.get_next_fire_time(first, first) if first is not None else None
    if first is None or second is None:
        return DAY_S
    return max(float((second - first).total_seconds()), 1.0)
