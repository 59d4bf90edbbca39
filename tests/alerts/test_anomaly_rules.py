"""`op: anomaly` rules end to end on a fake clock: detectors fed from per-minute rollups, the
engine's for:/resolve timing, a quiet week, restarts, and too little history."""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from lookout.alerts import notes
from lookout.alerts.anomaly import usual_text
from lookout.alerts.config import RuleConfig
from lookout.alerts.engine import AlertEngine
from lookout.alerts.state import AlertState, NotificationKind
from lookout.clock import FakeClock
from lookout.detectors.anomaly import SHAPE_POINTS, AnomalyDetector, AnomalyScore, Baseline
from lookout.monitor.anomaly import AnomalyBook, anomaly_rules
from lookout.monitor.storage import RollupPoint
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox
from lookout.series import SeriesPoint

DAY = 86_400.0
START = 1_700_006_400.0  # a midnight (UTC)
LABELS = (("app", "bot"), ("model", "*"))


def usual(t: float, seed: int = 0) -> float:
    """p95 latency (s): 1.5 s at night to 2.5 s at noon, a little noise."""
    noise = random.Random(int(t // 60) * 7919 + seed).gauss(0.0, 0.08)
    return 2.0 - 0.5 * math.cos(2 * math.pi * (t % DAY) / DAY) + noise


class Rollups:
    """The rollups a store would hold: minute rows of latency_p95 for app bot (all models)."""

    def __init__(self, value: Any) -> None:
        self.value = value
        self.until = START

    async def rollups(
        self, since: float, app: str | None = None, series: str | None = None
    ) -> list[RollupPoint]:
        first = int(max(since, START) // 60) * 60
        return [
            RollupPoint(m, "bot", "*", "latency_p95", self.value(m + 30))
            for m in range(first, int(self.until), 60)
        ]


def rule(**extra: Any) -> RuleConfig:
    return RuleConfig.model_validate(
        {
            "name": "slow",
            "metric": "latency_p95",
            "op": "anomaly",
            "direction": "up",
            "window": 60,
            "for": 120,
            **extra,
        }
    )


async def engine_with(
    tmp_path: Path, rules: list[RuleConfig], value: Any, days: float, clock: FakeClock
) -> tuple[AlertEngine, AnomalyBook, Rollups, SqliteOutbox]:
    store = Rollups(value)
    store.until = START + days * DAY
    clock.set(store.until)
    book = AnomalyBook(rules, store, now=clock.now, checkpoint_path=tmp_path / "a.json")
    await book.catch_up()
    outbox = await SqliteOutbox(tmp_path / "outbox.db").__aenter__()

    def series(window_s: float, now: float) -> list[SeriesPoint]:
        return [SeriesPoint("latency_p95", LABELS, value(now), 10)]

    engine = AlertEngine(
        rules,
        {},
        series=series,
        outbox=outbox,
        clock=clock,
        registry=CollectorRegistry(),
        eval_interval_s=60,
        anomaly=book,
    )
    return engine, book, store, outbox


async def test_a_level_shift_and_a_spike_fire_and_resolve_on_time(tmp_path: Path) -> None:
    shift_at, shift_end, spike_at = START + 4 * DAY + 10 * 3600, START + 4 * DAY + 11 * 3600, 0.0
    spike_at = START + 4 * DAY + 15 * 3600

    def value(t: float) -> float:
        bump = 1.5 if shift_at <= t < shift_end else 0.0
        bump += 4.0 if spike_at <= t < spike_at + 240 else 0.0
        return usual(t) + bump

    clock = FakeClock()
    engine, book, store, outbox = await engine_with(tmp_path, [rule()], value, 4.0, clock)
    events: list[tuple[NotificationKind, float, str]] = []
    thresholds: list[tuple[float | None, float | None]] = []
    for minute in range(24 * 60):
        now = START + 4 * DAY + minute * 60
        clock.set(now)
        store.until = now
        await book.catch_up()
        for note in await engine.evaluate(now):
            notified = notes.notified(engine._rules[0], note, engine.anomaly, "")
            events.append((note.kind, now, notified.summary))
            reading = book.assess("slow", LABELS, value(now), now)
            thresholds.append((notified.threshold, reading.threshold))
    await outbox.__aexit__(None, None, None)
    kinds = [(k, round((t - START - 4 * DAY) / 60)) for k, t, _ in events]
    # for: 120 s -> fires on the third anomalous evaluation; resolves on the first normal one.
    assert kinds == [
        (NotificationKind.FIRING, 10 * 60 + 2),
        (NotificationKind.RESOLVED, 11 * 60),
        (NotificationKind.FIRING, 15 * 60 + 2),
        (NotificationKind.RESOLVED, 15 * 60 + 4),
    ]
    # The notification says what is usual at this hour, from the daily profile.
    assert "usual at this hour" in events[0][2]
    # The notification gives the z the value was held to: the rule's, or the series' tail's.
    told, held_to = thresholds[0]
    assert told == held_to and told is not None and told >= rule().anomaly_z
    assert book.detectors[("slow", LABELS)].normal(shift_at)[0] is Baseline.DAILY  # type: ignore[index]


def test_a_quiet_seasonal_week_stays_within_its_false_alarm_target() -> None:
    r = rule(false_alarms_per_week=1)
    book = AnomalyBook([r], Rollups(usual), now=lambda: 0.0, checkpoint_path=None)
    detector = AnomalyDetector(book._rules["slow"].config)
    for minute in range(4 * 24 * 60):  # four days of history
        detector.update(START + minute * 60 + 30, usual(START + minute * 60 + 30))
    episodes, above = 0, False
    for minute in range(4 * 24 * 60, 11 * 24 * 60):  # then a week, scored and learned
        t = START + minute * 60 + 30
        now_above = detector.update(t, usual(t, seed=1)).anomalous
        episodes += now_above and not above
        above = now_above
    # Target 1 a week; Poisson(1) exceeds 4 with probability 0.4%.
    assert episodes <= 4


async def test_a_restart_keeps_the_learned_state(tmp_path: Path) -> None:
    forever = asyncio.Event()

    async def sleep(_: float) -> None:
        await forever.wait()

    clock = FakeClock(START + 4 * DAY)
    store = Rollups(usual)
    store.until = START + 4 * DAY
    path = tmp_path / "anomaly.json"
    first = AnomalyBook([rule()], store, now=clock.now, checkpoint_path=path, sleep=sleep)
    async with first.running():
        before = first.assess("slow", LABELS, 3.0, clock.now())
    assert path.exists()
    # The store has lost its rollups (retention): the checkpoint alone restores the state.
    empty = Rollups(usual)
    second = AnomalyBook([rule()], empty, now=clock.now, checkpoint_path=path, sleep=sleep)
    async with second.running():
        after = second.assess("slow", LABELS, 3.0, clock.now())
    assert after == before
    assert after.baseline is Baseline.DAILY and after.history == 4 * 24 * 60


async def test_too_little_history_says_so_rather_than_firing(tmp_path: Path) -> None:
    clock = FakeClock()
    engine, _, _, outbox = await engine_with(
        tmp_path, [rule(**{"for": 60})], lambda t: 50.0, 10 / (24 * 60), clock
    )
    assert await engine.evaluate(clock.now()) == []
    await outbox.__aexit__(None, None, None)
    assert engine.anomaly is not None
    reading = engine.anomaly.last[("slow", LABELS)]
    assert reading.baseline is Baseline.LEARNING and reading.history == 10
    assert all(a.state is not AlertState.FIRING for a in engine.alerts())


def test_anomaly_rules_are_checked() -> None:
    with pytest.raises(ValidationError, match="op anomaly watches one of"):
        rule(metric="drift_score")
    with pytest.raises(ValidationError, match="not both"):
        rule(sensitivity=4, false_alarms_per_week=1)
    with pytest.raises(ValidationError, match="needs `threshold`"):
        RuleConfig(name="x", metric="qps", op=">")
    assert rule(sensitivity=5).anomaly_z == 5
    assert 3.5 < rule(false_alarms_per_week=1).anomaly_z < 4.0  # one tail, a decision a minute
    # A false-alarm target is also held on the series' own tail (a minute's share of a week);
    # an explicit sensitivity is the z as given.
    configs = {
        r.name: r.config
        for r in anomaly_rules([rule(name="target", false_alarms_per_week=2), rule(sensitivity=5)])
    }
    assert configs["target"].tail_rate == pytest.approx(2 / (7 * 24 * 60))
    assert configs["slow"].tail_rate == 0.0


def test_a_notification_says_when_the_pattern_not_the_level_made_the_value_anomalous() -> None:
    by_shape = AnomalyScore(
        2.4, Baseline.DAILY, 2.0, 0.2, 2.0, 9.0, 1.2, 2.8, True, 5000, 4.0, shape=9.0
    )
    text = usual_text("latency_p95", by_shape)
    assert text.startswith("latency_p95 2.4; usual at this hour 1.2-2.8 (+2.0 robust z")
    assert "unusual pattern over the last minutes, shape score 9.0" in text
    by_level = replace(by_shape, value=3.6, z=8.0, score=8.0, shape=3.0)
    assert "pattern" not in usual_text("latency_p95", by_level)


def test_the_shape_score_is_on_unless_the_rule_turns_it_off_and_only_for_anomaly_rules() -> None:
    base = {"name": "odd", "metric": "latency_p95", "op": "anomaly"}
    default, plain = (
        RuleConfig.model_validate(base),
        RuleConfig.model_validate(base | {"shape": False}),
    )
    [default_rule, plain_rule] = anomaly_rules([default, plain])
    assert default_rule.config.shape_points == SHAPE_POINTS
    assert plain_rule.config.shape_points == 0  # the robust z alone, at its lower CPU (docs)
    with pytest.raises(ValidationError, match="`shape` is for op anomaly"):
        RuleConfig.model_validate(base | {"op": ">", "threshold": 1.0, "shape": True})
    # Written out, so the effective config shows it; a threshold rule that says nothing of it
    # is valid, and both survive a dump and a reload.
    threshold_rule = RuleConfig.model_validate(base | {"op": ">", "threshold": 1.0})
    assert default.shape is True and threshold_rule.shape is None
    for rule in (default, plain, threshold_rule):
        assert RuleConfig.model_validate(rule.model_dump(by_alias=True)) == rule
