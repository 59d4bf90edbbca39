"""Four days of per-minute history for the demo's anomaly rule, written to the store before
the daemon starts, so the rule has a learned normal (with a daily rhythm) from the first
minute instead of saying it is still learning."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.monitor.config import Settings
from lookout.monitor.demo.traffic import PROFILES, SUPPORT
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage import RollupPoint
from lookout.monitor.storage.sqlite import SqliteStore
from lookout.series import ALL

DAYS = 4
DAY_S = 86_400.0
RECORDS_PER_MINUTE = 240  # about what the demo's rule window holds
SPREAD = 0.35  # the demo traffic's log-normal latency spread
DAILY_SWING = 0.08  # +-8% over the day, level with the live traffic at the demo's start


def history(now: float, seed: int = 7) -> list[RollupPoint]:
    """support-bot's p95 latency (s) for every minute of the `DAYS` days before `now`."""
    rng = np.random.default_rng(seed)
    median_s = PROFILES[SUPPORT].latency_ms / 1000.0
    first = int(now // 60) * 60 - int(DAYS * DAY_S)
    minutes = np.arange(first, int(now // 60) * 60, 60)
    draws = rng.lognormal(math.log(median_s), SPREAD, (len(minutes), RECORDS_PER_MINUTE))
    p95 = np.quantile(draws, 0.95, axis=1)
    rhythm = 1.0 + DAILY_SWING * np.sin(2 * math.pi * (minutes - now) / DAY_S)
    return [
        RollupPoint(int(m), SUPPORT, ALL, "latency_p95", float(v))
        for m, v in zip(minutes, p95 * rhythm, strict=True)
    ]


async def seed_history(settings: Settings, now: float) -> None:
    async with SqliteStore(
        settings.store, IngestMetrics(CollectorRegistry()), SystemClock()
    ) as store:
        store.put_rollups(history(now))
        await store.flush()
