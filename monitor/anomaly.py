"""The anomaly rules' detectors: one `detectors.anomaly.AnomalyDetector` per (rule, label set),
fed from the stored per-minute rollups, checkpointed, and rebuilt at start.

`AnomalyBook.running()` restores the checkpoint (a JSON file beside the SQLite store), catches
up on the rollups stored since (all of the last `history_s` without a checkpoint), then every
`poll_s` feeds the minutes stored since the last pass and saves a checkpoint every
`checkpoint_every` passes and on stop. The alert engine reads it through
`alerts.anomaly.AnomalyScorer`: `assess` scores a rule's current value against the learned
normal without learning from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from lookout.alerts.config import DEFAULT_FALSE_ALARMS_PER_WEEK
from lookout.detectors.anomaly import (
    SHAPE_POINTS,
    WEEK_S,
    AnomalyConfig,
    AnomalyDetector,
    AnomalyScore,
    Direction,
    Seasonality,
)
from lookout.series import ALL

if TYPE_CHECKING:
    from lookout.alerts.config import RuleConfig
    from lookout.monitor.storage import RollupPoint

log = structlog.get_logger(__name__)
Labels = tuple[tuple[str, str], ...]
ROLLUP_S = 60
HISTORY_S = 15 * 86_400.0  # two weeks and a day: enough for a weekly profile's first periods
MAX_SERIES_PER_RULE = 500  # label sets past this are not learned (counted in the log)


class RollupReader(Protocol):
    async def rollups(
        self, since: float, app: str | None = None, series: str | None = None
    ) -> list[RollupPoint]: ...


@dataclass(frozen=True, slots=True)
class _Rule:
    name: str
    metric: str
    app: str | None
    model: str
    config: AnomalyConfig

    def labels(self, app: str, model: str) -> Labels | None:
        """The label set a rollup row feeds, as the rule's observations name it; None when the
        row is outside the rule's scope (as `alerts.rules` scopes windowed series)."""
        if model != self.model or (self.app is None and app == ALL):
            return None
        if self.app is not None and app != self.app:
            return None
        return (("app", app), ("model", model))


def tail_rate(rule: RuleConfig) -> float:
    """A rule with a false-alarm target (not an explicit `sensitivity`) holds it on the series'
    own tail: the fraction of learned minutes it may find anomalous."""
    if rule.sensitivity is not None:
        return 0.0
    rate = rule.false_alarms_per_week or DEFAULT_FALSE_ALARMS_PER_WEEK
    return min(0.5, rate * ROLLUP_S / WEEK_S)


def anomaly_rules(rules: list[RuleConfig]) -> list[_Rule]:
    return [
        _Rule(
            r.name,
            r.metric,
            r.where.get("app"),
            r.where.get("model", ALL),
            AnomalyConfig(
                direction=Direction(r.direction),
                seasonality=Seasonality(r.seasonality),
                threshold_z=r.anomaly_z,
                tail_rate=tail_rate(r),
                shape_points=SHAPE_POINTS if r.shape else 0,
            ),
        )
        for r in rules
        if r.op == "anomaly"
    ]


class AnomalyBook:
    """The detectors of every anomaly rule (see the module docstring)."""

    def __init__(
        self,
        rules: list[RuleConfig],
        store: RollupReader,
        *,
        now: Callable[[], float],
        checkpoint_path: Path | None,
        poll_s: float = 60.0,
        checkpoint_every: int = 10,
        history_s: float = HISTORY_S,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._rules = {r.name: r for r in anomaly_rules(rules)}
        self._store = store
        self._now = now
        self._path = checkpoint_path
        self._poll_s = poll_s
        self._checkpoint_every = checkpoint_every
        self._history_s = history_s
        self._sleep = sleep
        self.detectors: dict[tuple[str, Labels], AnomalyDetector] = {}
        self.fed_until = 0.0  # the next minute to feed
        self.dropped = 0

    # -- the scorer the alert engine reads ----------------------------------------------------

    def assess(self, rule: str, labels: Labels, value: float, now: float) -> AnomalyScore:
        detector = self.detectors.get((rule, labels))
        if detector is None:
            detector = AnomalyDetector(self._rules[rule].config)  # no history yet: learning
        return detector.score(now, value)

    def bands(self, since: float, now: float, step_s: float) -> dict[str, dict[str, list[Any]]]:
        """app -> metric -> [(time, low, high)]: each anomaly rule's band over all models, as
        its detector expects the series now (the profile's hour by hour), for charts."""
        out: dict[str, dict[str, list[Any]]] = {}
        for (name, labels), detector in self.detectors.items():
            scope = dict(labels)
            if scope.get("model") != ALL:
                continue
            k = detector.threshold()
            band = []
            t = since
            while t <= now:
                normal = detector.normal(t)
                if normal is not None:
                    _, level, spread = normal
                    band.append((t, level - k * spread, level + k * spread))
                t += step_s
            if band:
                out.setdefault(scope["app"], {})[self._rules[name].metric] = band
        return out

    # -- learning -----------------------------------------------------------------------------

    def feed(self, points: list[RollupPoint]) -> int:
        """Learn stored minutes (in minute order); how many values were learned."""
        learned = 0
        for p in points:
            if p.minute < self.fed_until:
                continue  # already learned (a replay overlapping a checkpoint)
            for rule in self._rules.values():
                labels = rule.labels(p.app, p.model) if p.series == rule.metric else None
                if labels is None:
                    continue
                detector = self._detector(rule, labels)
                if detector is not None:
                    detector.update(p.minute + ROLLUP_S / 2, p.value)
                    learned += 1
        return learned

    def _detector(self, rule: _Rule, labels: Labels) -> AnomalyDetector | None:
        key = (rule.name, labels)
        detector = self.detectors.get(key)
        if detector is None:
            if sum(1 for name, _ in self.detectors if name == rule.name) >= MAX_SERIES_PER_RULE:
                self.dropped += 1
                return None
            detector = self.detectors[key] = AnomalyDetector(rule.config)
        return detector

    async def catch_up(self) -> int:
        """Feed every minute stored since the last pass (complete minutes only)."""
        now = self._now()
        until = int(now // ROLLUP_S) * ROLLUP_S
        since = max(self.fed_until, now - self._history_s)
        learned, last = 0, None
        for metric in sorted({r.metric for r in self._rules.values()}):
            rows = [p for p in await self._store.rollups(since, series=metric) if p.minute < until]
            learned += self.feed(rows)
            if rows:
                last = max(rows[-1].minute, last or 0)
        # Up to the last minute stored, not to now: a minute written but not yet flushed
        # (rollups are written together, a few seconds after the minute) comes next pass.
        if last is not None:
            self.fed_until = max(self.fed_until, last + ROLLUP_S)
        return learned

    # -- state --------------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        return {
            "version": 1,
            "fed_until": self.fed_until,
            "detectors": [
                {"rule": rule, "labels": [list(kv) for kv in labels], "state": d.save()}
                for (rule, labels), d in self.detectors.items()
            ],
        }

    def restore(self, saved: dict[str, Any]) -> None:
        """The saved detectors of rules that still exist (a rule whose settings changed keeps
        its history: the state is values, not settings)."""
        self.fed_until = float(saved.get("fed_until", 0.0))
        for item in saved.get("detectors", []):
            rule = self._rules.get(item["rule"])
            if rule is not None:
                labels = tuple((str(k), str(v)) for k, v in item["labels"])
                self.detectors[(rule.name, labels)] = AnomalyDetector.restore(
                    rule.config, item["state"]
                )

    async def checkpoint(self) -> None:
        if self._path is None:
            return
        text = json.dumps(self.save())
        await asyncio.to_thread(_write_atomically, self._path, text)

    async def _load(self) -> None:
        if self._path is None or not self._path.exists():
            return
        try:
            self.restore(json.loads(await asyncio.to_thread(self._path.read_text)))
        except (ValueError, KeyError, TypeError) as e:
            log.error("anomaly_checkpoint_unreadable", path=str(self._path), error=str(e))
            self.detectors.clear()
            self.fed_until = 0.0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AnomalyBook]:
        """Restore, catch up from the rollups, and keep learning until the block ends."""
        await self._load()
        learned = await self.catch_up()
        log.info("anomaly_detectors_ready", series=len(self.detectors), learned=learned)
        try:
            async with asyncio.TaskGroup() as group:
                task = group.create_task(self._learn_forever(), name="anomaly-learner")
                try:
                    yield self
                finally:
                    task.cancel()
        finally:
            await self.checkpoint()

    async def _learn_forever(self) -> None:
        passes = 0
        while True:
            await self._sleep(self._poll_s)
            await self.catch_up()
            passes += 1
            if passes % self._checkpoint_every == 0:
                await self.checkpoint()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
