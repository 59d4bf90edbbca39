"""Evaluates the rules every `eval_interval`, drives the alert states, and delivers what they
call for through the durable outbox.

An async context manager owning two tasks: the evaluator (windows -> observations -> state
machine -> outbox) and the delivery worker (outbox -> notifier, with retries).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from lookout.alerts.outbox import OutboxStatus, SqliteOutbox
from lookout.alerts.rules import Observation, Rule, observe
from lookout.alerts.state import Alert, AlertState, NoData, Notification, Timing, step
from lookout.alerts.webhook import Outcome, alertmanager_payload
from lookout.backoff import backoff_s

if TYPE_CHECKING:
    from types import TracebackType

    from lookout.clock import Clock
    from lookout.monitor.config import RuleConfig
    from lookout.monitor.windows import WindowedMetrics

log = structlog.get_logger(__name__)
_MAX_AGE_S = 24 * 3600.0


class ChannelNotifier(Protocol):
    async def send(self, payload: dict[str, Any], idempotency_key: str, now: float) -> Outcome: ...


class _SafeDict(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render(template: str, values: Mapping[str, Any]) -> str:
    """A rule's summary with {value}, {threshold} and labels filled; unknown fields stay as is."""
    try:
        return template.format_map(_SafeDict(values))
    except (ValueError, IndexError):
        return template


class AlertEngine:
    def __init__(
        self,
        rules: list[RuleConfig],
        notifiers: Mapping[str, ChannelNotifier],
        *,
        windows: WindowedMetrics,
        outbox: SqliteOutbox,
        clock: Clock,
        registry: CollectorRegistry,
        eval_interval_s: float,
        external_url: str = "",
    ) -> None:
        self._rules = rules
        # Built once: the pure rule and timing each rule config stands for.
        self._specs = [
            (
                Rule(r.name, r.metric, r.threshold, r.op, r.where, r.min_samples),
                Timing(r.for_s or 0.0, r.keep_firing_for or 0.0, r.repeat_interval),
            )
            for r in rules
        ]
        self._next_expiry_at = 0.0
        self._notifiers = notifiers
        self._windows = windows
        self._outbox = outbox
        self._clock = clock
        self._eval_interval_s = eval_interval_s
        self._external_url = external_url
        self._alerts: dict[tuple[str, tuple[tuple[str, str], ...]], Alert] = {}
        self._rng = random.Random()
        self._wake_delivery = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.evaluated = asyncio.Event()
        self._firing = Gauge("lookout_alerts_firing", "Alerts firing", ["rule"], registry=registry)
        self._sent = Counter(
            "lookout_notifications", "Notification attempts", ["channel", "outcome"],
            registry=registry,
        )  # fmt: skip
        self._depth = Gauge(
            "lookout_outbox_depth", "Notifications not yet delivered", registry=registry
        )
        self._oldest = Gauge(
            "lookout_outbox_oldest_age_seconds",
            "Age of the oldest undelivered notification",
            registry=registry,
        )

    async def __aenter__(self) -> AlertEngine:
        for alert in await self._outbox.load_alerts():
            self._alerts[(alert.rule, alert.labels)] = alert
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._tasks = [
            self._group.create_task(self._evaluate_forever(), name="alert-evaluator"),
            self._group.create_task(self._deliver_forever(), name="alert-delivery"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        if self._group is not None:
            await self._group.__aexit__(exc_type, exc, tb)
        # An evaluation cut short by the stop may not have saved its changes.
        await self._outbox.save_alerts(list(self._alerts.values()))

    def alerts(self) -> list[Alert]:
        return list(self._alerts.values())

    async def _evaluate_forever(self) -> None:
        while True:
            await self.evaluate(self._clock.now())
            self.evaluated.set()
            await asyncio.sleep(self._eval_interval_s)

    async def evaluate(self, now: float) -> list[Notification]:
        """One evaluation of every rule at `now`; returns the notifications it enqueued."""
        sent: list[Notification] = []
        changed: list[Alert] = []
        # Read every time: `lookout silence add` from another process applies within one
        # evaluation interval.
        silences = await self._outbox.silences(active_at=now)
        for rule, (spec, timing) in zip(self._rules, self._specs, strict=True):
            stats = self._windows.query(rule.window, now)
            observations = {o.labels: o for o in observe(spec, stats)}
            # Alerts whose scope has gone quiet get a no-data observation.
            for (name, labels), _alert in list(self._alerts.items()):
                if name == rule.name and labels not in observations:
                    observations[labels] = Observation(labels, None, None)
            firing = 0
            for labels, obs in observations.items():
                key = (rule.name, labels)
                before = self._alerts.get(key) or Alert(rule=rule.name, labels=labels)
                alert, note = step(before, obs.breached, obs.value, now, timing=timing,
                                   no_data=NoData(rule.no_data))  # fmt: skip
                self._alerts[key] = alert
                firing += alert.state is AlertState.FIRING
                if note is not None:
                    # State first: a crash after this re-sends at most, never forgets.
                    await self._outbox.save_alerts([alert])
                    label_map = dict(labels)
                    if any(x.mutes(rule.name, label_map, now) for x in silences):
                        for channel in rule.channels:
                            self._sent.labels(channel, "silenced").inc()
                        log.info("alert_silenced", rule=rule.name, labels=label_map,
                                 kind=note.kind.value)  # fmt: skip
                        continue
                    await self._enqueue(rule, note, now)
                    sent.append(note)
                elif alert.state is not before.state:
                    changed.append(alert)
            self._firing.labels(rule.name).set(firing)
        if changed:
            await self._outbox.save_alerts(changed)
        return sent

    async def _enqueue(self, rule: RuleConfig, note: Notification, now: float) -> None:
        labels = dict(note.alert.labels)
        values = {"value": note.alert.value, "threshold": rule.threshold, **labels}
        summary = render(rule.summary or f"{rule.name}: {rule.metric} {rule.op} {rule.threshold}",
                         values)  # fmt: skip
        for channel in rule.channels:
            payload = alertmanager_payload(
                note, receiver=channel, severity=rule.severity, summary=summary,
                description=render(rule.description, values), external_url=self._external_url,
                threshold=rule.threshold,
            )  # fmt: skip
            await self._outbox.enqueue(channel, note.idempotency_key, payload, now)
        log.info("alert_" + note.kind.value, rule=rule.name, labels=labels, value=note.alert.value)
        self._wake_delivery.set()

    async def _deliver_forever(self) -> None:
        while True:
            await self.deliver_due(self._clock.now())
            next_at = await self._outbox.next_due_at()
            wait_s = 1.0 if next_at is None else min(max(next_at - self._clock.now(), 0.01), 1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake_delivery.wait(), wait_s)
            self._wake_delivery.clear()

    async def deliver_due(self, now: float) -> None:
        if now >= self._next_expiry_at:  # a write: once a minute is plenty for a 24 h limit
            self._next_expiry_at = now + 60.0
            expired = await self._outbox.expire(older_than=now - _MAX_AGE_S, now=now)
            if expired:
                log.error("notifications_expired", count=expired, max_age_s=_MAX_AGE_S)
                self._sent.labels("*", "expired").inc(expired)
        for item in await self._outbox.due(now):
            notifier = self._notifiers.get(item.channel)
            if notifier is None:
                await self._outbox.finish(item.id, OutboxStatus.FAILED, now, "no such channel")
                self._sent.labels(item.channel, "failed").inc()
                continue
            outcome = await notifier.send(item.payload, item.idempotency_key, now)
            if outcome.delivered:
                await self._outbox.finish(item.id, OutboxStatus.DELIVERED, now)
                self._sent.labels(item.channel, "delivered").inc()
            elif outcome.retry:
                delay = backoff_s(
                    item.attempts, self._rng, base_s=1.0, cap_s=300.0,
                    retry_after_s=outcome.retry_after_s,
                )  # fmt: skip
                await self._outbox.retry_at(item.id, now + delay, outcome.detail)
                self._sent.labels(item.channel, "retry").inc()
            else:
                await self._outbox.finish(item.id, OutboxStatus.FAILED, now, outcome.detail)
                self._sent.labels(item.channel, "failed").inc()
                log.error("notification_failed", channel=item.channel, detail=outcome.detail)
        depth, oldest = await self._outbox.depth()
        self._depth.set(depth)
        self._oldest.set(0.0 if oldest is None else now - oldest)
