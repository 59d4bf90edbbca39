"""Engagement: distinct users and sessions per window in bounded memory, sessions split on
the idle gap, over HTTP into a running daemon."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any, NamedTuple

import datasketches
import httpx

from lookout.clock import FakeClock
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.metrics.engagement import EngagementWindows
from tests.conftest import running, sample_value, status_of

T0 = 1_800_000_000.0  # a minute's start


def values(windows: EngagementWindows, window_s: float, now: float) -> dict[str, float | None]:
    return {p.metric: p.value for p in windows.points(window_s, now)}


def test_distinct_users_within_the_sketch_error_on_100k_users_in_bounded_memory() -> None:
    lg_k = 11
    windows = EngagementWindows(bucket_s=60, max_window_s=600, lg_k=lg_k, max_open_sessions=1000)
    # 100,000 users over ten minutes, each seen twice (in different minutes), 20,000 sessions.
    for round_ in range(2):
        for i in range(100_000):
            at = T0 + (i * 7 + round_ * 31) % 600
            windows.observe("shop", f"user-{i}", f"session-{i % 20_000}", at)
    got = values(windows, 600, T0 + 599)
    # The documented bound for a union of sketches, at three standard deviations.
    bound = abs(datasketches.hll_sketch.get_rel_err(True, True, lg_k, 3))
    assert abs(got["active_users"] - 100_000) / 100_000 <= bound  # type: ignore[operator]
    assert abs(got["active_sessions"] - 20_000) / 20_000 <= bound  # type: ignore[operator]
    # Memory: at most two sketches per app and minute, whatever the number of users; open
    # sessions at most max_open_sessions (the idlest ended early and counted).
    per_sketch = datasketches.hll_sketch.get_max_updatable_serialization_bytes(
        lg_k, datasketches.tgt_hll_type.HLL_8
    )
    held = windows.memory_bytes()
    assert held <= 11 * 2 * per_sketch + 1000 * 200
    assert windows.open_sessions() <= 1000 and windows.evicted > 0
    for i in range(100_000, 200_000):  # twice the users: no more memory
        windows.observe("shop", f"user-{i}", None, T0 + i % 600)
    assert windows.memory_bytes() <= held


def test_sessions_split_on_the_idle_gap_and_are_measured_when_they_end() -> None:
    windows = EngagementWindows(bucket_s=60, max_window_s=3600, idle_gap_s=300)
    for offset in (0, 60, 120):  # three requests over two minutes
        windows.observe("bot", "u1", "s1", T0 + offset)
    assert "requests_per_session" not in values(windows, 3600, T0 + 400)  # none ended yet
    windows.observe("bot", "u1", "s1", T0 + 120 + 301)  # after the gap: a second session
    windows.observe("bot", "u1", "s1", T0 + 120 + 331)
    first = values(windows, 3600, T0 + 120 + 331)
    assert (first["requests_per_session"], first["session_duration_p50"]) == (3.0, 120.0)
    both = values(windows, 3600, T0 + 451 + 301)  # the second ended too
    assert both["requests_per_session"] == 2.5
    # Two sessions, 30 s and 120 s: the t-digest interpolates between them.
    p50, p95 = both["session_duration_p50"], both["session_duration_p95"]
    assert p50 is not None and p95 is not None and 30.0 < p50 < p95 <= 120.0
    assert (both["active_users"], both["active_sessions"]) == (1.0, 1.0)  # one id, reused


async def test_engagement_series_over_http_in_status_and_metrics(
    settings_for: Callable[..., Settings],
) -> None:
    clock = FakeClock(T0)
    settings = settings_for(
        detectors={"enabled": False},
        engagement={"session_idle_gap": "5m"},
        metrics={"default_window": "1h"},
    )
    async with running(Daemon(settings, clock=clock)) as d:
        assert d.api is not None
        base = f"http://127.0.0.1:{d.api.port}"
        headers = {"Content-Type": "application/json"}
        async with httpx.AsyncClient(base_url=base, headers=headers) as api:

            async def post(body: Any) -> None:
                r = await api.post("/api/v1/records", content=json.dumps(body))
                assert r.status_code == 200 and r.json()["accepted"] == len(body)

            visit = [{"app": "web", "user_id": f"u{i}", "session_id": f"s{i}"} for i in range(3)]
            await post(visit)
            clock.advance(90)
            await post([*visit[:1], {"app": "web", "latency_ms": 5}])  # one without either
            clock.advance(400)  # s0 lasted 90 s with 2 requests, s1 and s2 0 s with 1
            await post([{"app": "web", "user_id": "u0", "session_id": "s0"}])  # s0 anew
        series = {p["metric"]: p["value"] for p in status_of(d)["engagement"]}
        assert (series["active_users"], series["active_sessions"]) == (3.0, 3.0)
        assert series["requests_per_session"] == 4 / 3
        # Sessions of 90, 0 and 0 s; the t-digest interpolates between them.
        assert 0.0 <= series["session_duration_p50"] < series["session_duration_p95"] <= 90.0
        assert sample_value(d, "lookout_active_users", {"app": "web"}) == 3.0
        assert sample_value(d, "lookout_requests_per_session", {"app": "web"}) == 4 / 3
        assert sample_value(d, "lookout_sessions_evicted_total") == 0.0


def test_a_message_of_records_at_once_counts_as_the_records_one_by_one() -> None:
    """The ingest path hands a message's records over together: sessions that end, start again
    after the gap, arrive out of order or are evicted come out the same as one at a time."""
    rng = random.Random(5)
    one, many = (
        EngagementWindows(bucket_s=60, idle_gap_s=300, max_open_sessions=60) for _ in range(2)
    )
    at = T0
    for _ in range(400):
        at += rng.choice([0.0, 2.0, 45.0, 400.0, -30.0])  # -30: a replayed, older message
        records = [
            Ids(rng.choice([None, f"u{rng.randint(0, 3000)}"]), rng.choice([None, f"s{i}"]))
            for i in (rng.randint(0, 300) for _ in range(rng.randint(1, 40)))
        ]
        for r in records:
            one.observe("shop", r.user_id, r.session_id, at)
        many.observe_many("shop", records, at)
    assert many.points(3600, at) == one.points(3600, at)
    assert many.evicted == one.evicted > 0


class Ids(NamedTuple):
    user_id: str | None
    session_id: str | None
