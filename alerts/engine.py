"""Evaluates the rules every `eval_interval`, drives the alert states, and delivers what they
call for through the durable outbox.

`AlertEngine.running()` is an async context manager owning the engine's tasks under one
TaskGroup: the evaluator (series -> observations -> state machine -> outbox) and one delivery
worker per channel. The series come from a `SeriesSource` the daemon hands in, so the engine
knows nothing of where they are computed.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from lookout.alerts.anomaly import AnomalyReadings, AnomalyScorer, usual_text
from lookout.alerts.delivery import ChannelDelivery, ChannelNotifier
from lookout.alerts.outbox import Silence, SqliteOutbox
from lookout.alerts.payload import NotifiedAlert, alertmanager_payload, back, resolved_summary
from lookout.alerts.rules import Observation, Rule, SeriesSource, observe
from lookout.alerts.state import (
    Alert,
    AlertState,
    NoData,
    Notification,
    NotificationKind,
    Timing,
    step,
)

if TYPE_CHECKING:
    from lookout.alerts.config import RuleConfig
    from lookout.clock import Clock

log = structlog.get_logger(__name__)
_MAX_AGE_S = 24 * 3600.0  # a channel without its own max_age

__all__ = ["AlertEngine", "ChannelNotifier", "render"]


class _SafeDict(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


class _NoValue:
    """A value a window did not have (a resolve on no data): "n/a" whatever the format spec."""

    def __format__(self, spec: str) -> str:
        return "n/a"


def render(template: str, values: Mapping[str, Any]) -> str:
    """A rule's summary with {value}, {threshold} and labels filled; unknown fields stay as is."""
    filled = {k: _NoValue() if v is None else v for k, v in values.items()}
    try:
        return template.format_map(_SafeDict(filled))
    except (ValueError, IndexError, TypeError):
        return template


def _engine_metrics(registry: CollectorRegistry) -> tuple[Gauge, Counter, Gauge, Gauge]:
    """Alerts firing per rule, notification attempts per outcome, the outbox's depth and age."""
    firing = Gauge("lookout_alerts_firing", "Alerts firing", ["rule"], registry=registry)
    sent = Counter(
        "lookout_notifications",
        "Notification attempts",
        ["channel", "outcome"],
        registry=registry,
    )
    depth = Gauge("lookout_outbox_depth", "Notifications not yet delivered", registry=registry)
    oldest = Gauge(
        "lookout_outbox_oldest_age_seconds",
        "Age of the oldest undelivered notification",
        registry=registry,
    )
    return firing, sent, depth, oldest


@dataclass(frozen=True, slots=True)
class _RuleOutcome:
    """What one rule's evaluation changed: alerts to save and notifications to send."""

    changed: list[Alert]
    notes: list[Notification]
    firing: int


class AlertEngine:
    def __init__(
        self,
        rules: list[RuleConfig],
        notifiers: Mapping[str, ChannelNotifier],
        *,
        series: SeriesSource,
        outbox: SqliteOutbox,
        clock: Clock,
        registry: CollectorRegistry,
        eval_interval_s: float,
        external_url: str = "",
        max_age_s: Mapping[str, float] | None = None,
        drain_timeout_s: float = 1.5,
        anomaly: AnomalyScorer | None = None,
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
        self.anomaly = AnomalyReadings(anomaly) if anomaly is not None else None
        if self.anomaly is None and any(r.op == "anomaly" for r in rules):
            raise ValueError("anomaly rules need an anomaly scorer")
        self._next_expiry_at = 0.0
        self._outbox = outbox
        self._series = series
        self._clock = clock
        self._eval_interval_s = eval_interval_s
        self._external_url = external_url.rstrip("/")
        self._drain_timeout_s = drain_timeout_s
        self._max_age_s = {name: (max_age_s or {}).get(name, _MAX_AGE_S) for name in notifiers}
        self._started_at = clock.now()
        self._alerts: dict[tuple[str, tuple[tuple[str, str], ...]], Alert] = {}
        self._stopping = asyncio.Event()
        self.evaluated = asyncio.Event()
        self._firing, self._sent, self._depth, self._oldest = _engine_metrics(registry)
        self.deliveries = {
            name: ChannelDelivery(
                name,
                notifier,
                outbox=outbox,
                clock=clock,
                counter=self._sent,
                after_pass=self._update_depth,
            )
            for name, notifier in notifiers.items()
        }

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AlertEngine]:
        """Restore the saved alerts, run the evaluator and the delivery workers until the block
        ends, then let a send under way finish and save the alerts."""
        await self._restore()
        try:
            async with asyncio.TaskGroup() as group:
                evaluator = group.create_task(self._evaluate_forever(), name="alert-evaluator")
                workers = [
                    group.create_task(d.run(self._stopping), name=f"alert-delivery-{d.channel}")
                    for d in self.deliveries.values()
                ]
                try:
                    yield self
                finally:
                    await self._stop(evaluator, workers)
        finally:
            # An evaluation cut short by the stop may not have saved its changes.
            await self._outbox.save_alerts(list(self._alerts.values()))

    async def _restore(self) -> None:
        now = self._clock.now()
        self._started_at = now
        for alert in await self._outbox.load_alerts():
            self._alerts[(alert.rule, alert.labels)] = alert
        orphans = await self._outbox.fail_unknown_channels(list(self.deliveries), now)
        if orphans:
            log.error(
                "notifications_failed_no_channel",
                count=orphans,
                hint="their channel is no longer configured",
            )
            self._sent.labels("*", "failed").inc(orphans)

    async def _stop(self, evaluator: asyncio.Task[None], workers: list[asyncio.Task[None]]) -> None:
        self._stopping.set()
        evaluator.cancel()
        for delivery in self.deliveries.values():
            delivery.wake.set()
        # A send under way may finish (or it would be sent again after the restart).
        if workers:
            _, late = await asyncio.wait(workers, timeout=self._drain_timeout_s)
            for task in late:
                task.cancel()

    def alerts(self) -> list[Alert]:
        return list(self._alerts.values())

    async def _evaluate_forever(self) -> None:
        while True:
            now = self._clock.now()
            await self.evaluate(now)
            await self._housekeeping(now)
            self.evaluated.set()
            await asyncio.sleep(self._eval_interval_s)

    def _no_data(self, rule: RuleConfig, now: float) -> NoData:
        # The windows start empty: until one window has passed since the start, missing data
        # says nothing about the app, so it neither resolves nor raises anything.
        if now - self._started_at < rule.window:
            return NoData.KEEP
        return NoData(rule.no_data)

    async def evaluate(self, now: float) -> list[Notification]:
        """One evaluation of every rule at `now`; returns the notifications it enqueued."""
        sent: list[Notification] = []
        changed: list[Alert] = []
        # Read every time: `lookout silence add` from another process applies within one
        # evaluation interval.
        silences = await self._outbox.silences(active_at=now)
        for rule, (spec, timing) in zip(self._rules, self._specs, strict=True):
            outcome = self._evaluate_rule(rule, spec, timing, silences, now)
            changed += outcome.changed
            self._firing.labels(rule.name).set(outcome.firing)
            if outcome.notes:
                # State first: a crash after this re-sends at most, never forgets.
                await self._outbox.save_alerts(changed)
                changed = []
                await self._enqueue(rule, outcome.notes, now)
                sent.extend(outcome.notes)
        if changed:
            await self._outbox.save_alerts(changed)
        return sent

    def _evaluate_rule(
        self,
        rule: RuleConfig,
        spec: Rule,
        timing: Timing,
        silences: Sequence[Silence],
        now: float,
    ) -> _RuleOutcome:
        observed = observe(spec, self._series(rule.window, now))
        if self.anomaly is not None and rule.op == "anomaly":
            observed = self.anomaly.observe(rule.name, rule.metric, observed, now)
        observations = {o.labels: o for o in observed}
        # Alerts whose scope has gone quiet get a no-data observation.
        for name, labels in list(self._alerts):
            if name == rule.name and labels not in observations:
                observations[labels] = Observation(labels, None, None)
        no_data = self._no_data(rule, now)
        changed: list[Alert] = []
        notes: list[Notification] = []
        firing = 0
        for labels, obs in observations.items():
            key = (rule.name, labels)
            before = self._alerts.get(key) or Alert(rule=rule.name, labels=labels)
            alert, note = step(before, obs.breached, obs.value, now, timing=timing, no_data=no_data)
            silenced = any(x.mutes(rule.name, dict(labels), now) for x in silences)
            alert, note = self._apply_silence(rule, alert, note, silenced, now)
            if note is not None:
                notes.append(note)
            self._alerts[key] = alert
            firing += alert.state is AlertState.FIRING
            # Saved on what a restart must not repeat or forget (not on every new value).
            if (
                alert.state is not before.state
                or alert.last_notified_at != before.last_notified_at
                or alert.muted != before.muted
            ):
                changed.append(alert)
        return _RuleOutcome(changed, notes, firing)

    def _apply_silence(
        self,
        rule: RuleConfig,
        alert: Alert,
        note: Notification | None,
        silenced: bool,
        now: float,
    ) -> tuple[Alert, Notification | None]:
        """The alert and what to tell under the silences: a muted notification is counted and
        dropped; a silence that ended while the alert still fires is told now, once."""
        if note is None and alert.muted and alert.state is AlertState.FIRING and not silenced:
            alert = replace(alert, last_notified_at=now)
            note = Notification(NotificationKind.FIRING, alert, now)
        if note is not None and silenced:
            for channel in rule.channels:
                self._sent.labels(channel, "silenced").inc()
            log.info(
                "alert_silenced", rule=rule.name, labels=dict(alert.labels), kind=note.kind.value
            )
            # A muted resolution leaves nothing to tell later.
            return replace(alert, muted=note.kind is not NotificationKind.RESOLVED), None
        if note is not None:
            alert = replace(alert, muted=False)
        return alert, note

    def _notified(self, rule: RuleConfig, note: Notification) -> NotifiedAlert:
        labels = dict(note.alert.labels)
        value = note.alert.value
        threshold = rule.anomaly_z if rule.op == "anomaly" else rule.threshold
        reading = None
        if rule.op == "anomaly" and self.anomaly is not None:
            reading = self.anomaly.last.get((rule.name, note.alert.labels))
            # The series' own tail may have raised the rule's z: the one the value was held to.
            if reading is not None and reading.threshold is not None:
                threshold = reading.threshold
        values: dict[str, object] = {"value": value, "threshold": threshold, **labels}
        if rule.op == "anomaly":
            usual = usual_text(rule.metric, reading)
            values["usual"] = usual
            # The usual band beside the value reads true both when firing and when resolved.
            default = resolved_default = f"{rule.name}: {usual} ({{app}})"
        else:
            assert rule.threshold is not None  # the config requires it for comparison ops
            values["back"] = back(value, rule.threshold)
            default = f"{rule.name}: {rule.metric} {rule.op} {rule.threshold:g} ({{app}})"
            resolved_default = resolved_summary(rule.name, rule.metric, rule.threshold, value)
        template = rule.summary or default
        if note.kind is NotificationKind.RESOLVED:  # the firing text would read as false now
            template = rule.resolved_summary or resolved_default
        dashboard = ""
        if self._external_url:
            dashboard = f"{self._external_url}/?app={quote(labels.get('app', ''))}"
        return NotifiedAlert(
            note,
            severity=rule.severity,
            summary=render(template, values),
            description=render(rule.description, values),
            threshold=threshold,
            dashboard_url=dashboard,
        )

    async def _enqueue(self, rule: RuleConfig, notes: list[Notification], now: float) -> None:
        """One notification per channel for each group: alerts of the rule that share status
        and the values of `group_by`, so a burst across many apps is one message per group."""
        groups: dict[tuple[bool, tuple[str, ...]], list[Notification]] = defaultdict(list)
        for note in notes:
            labels = dict(note.alert.labels)
            values = tuple(labels.get(name, "") for name in rule.group_by)
            groups[(note.kind is NotificationKind.RESOLVED, values)].append(note)
        for (_, values), members in groups.items():
            group_labels = {"alertname": rule.name, **dict(zip(rule.group_by, values, strict=True))}
            line = hashlib.sha256("\x1f".join([rule.name, *values]).encode()).hexdigest()[:16]
            if len(members) == 1:
                key = members[0].idempotency_key
            else:
                material = "\x1f".join(sorted(n.idempotency_key for n in members))
                key = f"group:{line}:{hashlib.sha256(material.encode()).hexdigest()[:24]}"
            items = [self._notified(rule, n) for n in members]
            for channel in rule.channels:
                payload = alertmanager_payload(
                    items,
                    receiver=channel,
                    group_labels=group_labels,
                    external_url=self._external_url,
                )
                await self._outbox.enqueue(channel, key, payload, now, ordering_key=line)
            for note in members:
                log.info(
                    "alert_" + note.kind.value,
                    rule=rule.name,
                    labels=dict(note.alert.labels),
                    value=note.alert.value,
                )
        for channel in rule.channels:
            delivery = self.deliveries.get(channel)
            if delivery is not None:
                delivery.wake.set()

    async def _housekeeping(self, now: float) -> None:
        if now >= self._next_expiry_at:  # a write: once a minute is enough for an hours' limit
            self._next_expiry_at = now + min([60.0, *self._max_age_s.values()])
            for channel, max_age_s in self._max_age_s.items():
                expired = await self._outbox.expire(channel, older_than=now - max_age_s, now=now)
                if expired:
                    log.error(
                        "notifications_expired", channel=channel, count=expired, max_age_s=max_age_s
                    )
                    self._sent.labels(channel, "expired").inc(expired)
        await self._update_depth(now)

    async def _update_depth(self, now: float) -> None:
        depth, oldest = await self._outbox.depth()
        self._depth.set(depth)
        self._oldest.set(0.0 if oldest is None else now - oldest)
