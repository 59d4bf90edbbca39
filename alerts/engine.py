"""Evaluates the rules every `eval_interval`, drives the alert states, and delivers what they
call for through the durable outbox.

`AlertEngine.running()` is an async context manager owning the engine's tasks under one
TaskGroup: the evaluator (series -> observations -> state machine -> outbox) and one delivery
worker per channel. The series come from a `SeriesSource` the daemon hands in, so the engine
knows nothing of where they are computed.

In a cluster only the node leading alerting (`LeaderGate.held`) evaluates; each evaluation's
state and notifications are one write, and a node that has just taken the lead (`term` changed)
first loads the state its predecessor committed. Delivery workers run on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from lookout.alerts.anomaly import AnomalyReadings, AnomalyScorer
from lookout.alerts.delivery import ChannelDelivery, ChannelNotifier
from lookout.alerts.notes import outbox_entries, render
from lookout.alerts.outbox import Outbox, OutboxEntry, Silence
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
from lookout.errors import StoreError

if TYPE_CHECKING:
    from lookout.alerts.config import RuleConfig
    from lookout.clock import Clock

log = structlog.get_logger(__name__)
_MAX_AGE_S = 24 * 3600.0  # a channel without its own max_age

__all__ = ["AlertEngine", "ChannelNotifier", "LeaderGate", "render"]


class LeaderGate(Protocol):
    """Whether this node leads alerting, and how many times it took the lead."""

    held: bool
    term: int


@dataclass(slots=True)
class _Alone:
    """A node alone leads for good."""

    held: bool = True
    term: int = 1


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
        outbox: Outbox,
        clock: Clock,
        registry: CollectorRegistry,
        eval_interval_s: float,
        external_url: str = "",
        max_age_s: Mapping[str, float] | None = None,
        drain_timeout_s: float = 1.5,
        anomaly: AnomalyScorer | None = None,
        leader: LeaderGate | None = None,
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
        self._leader = leader or _Alone()
        self._term: int | None = None  # the term whose state is loaded; None: load it first
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
            if self._leader.held and self._term == self._leader.term:
                try:
                    await self._outbox.save_alerts(list(self._alerts.values()))
                except StoreError as exc:
                    log.warning("alert_state_not_saved", error=str(exc))

    async def _restore(self) -> None:
        now = self._clock.now()
        self._started_at = now
        await self._load()
        if self._leader.held:
            await self._take_over(now)

    async def _load(self) -> None:
        self._alerts = {(a.rule, a.labels): a for a in await self._outbox.load_alerts()}

    async def _take_over(self, now: float) -> None:
        """This node leads (again): the committed state, not what it held in memory."""
        term = self._leader.term
        if term > 1:
            log.warning("alerts_taken_over", term=term)
        await self._load()
        self._term = term
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
            try:
                await self.tick(self._clock.now())
            except StoreError as exc:  # the database is away: evaluate again once it is back
                self._term = None  # from what was committed
                log.error("alert_evaluation_failed", error=str(exc))
            self.evaluated.set()
            await asyncio.sleep(self._eval_interval_s)

    async def tick(self, now: float) -> list[Notification]:
        """One evaluation at `now` if this node leads alerting; else the leader's state is read
        (for /api/v1/alerts) and only the leader's gauges count firing alerts."""
        if not self._leader.held:
            self._term = None
            await self._load()
            for rule in self._rules:
                self._firing.labels(rule.name).set(0)
            await self._update_depth(now)
            return []
        if self._term != self._leader.term:
            await self._take_over(now)
        sent = await self.evaluate(now)
        await self._housekeeping(now)
        return sent

    def _no_data(self, rule: RuleConfig, now: float) -> NoData:
        # The windows start empty: until one window has passed since the start, missing data
        # says nothing about the app, so it neither resolves nor raises anything.
        if now - self._started_at < rule.window:
            return NoData.KEEP
        return NoData(rule.no_data)

    async def evaluate(self, now: float) -> list[Notification]:
        """One evaluation of every rule at `now`; returns the notifications it enqueued."""
        sent: list[tuple[RuleConfig, list[Notification]]] = []
        changed: list[Alert] = []
        # Read every time: `lookout silence add` from another process applies within one
        # evaluation interval.
        silences = await self._outbox.silences(active_at=now)
        for rule, (spec, timing) in zip(self._rules, self._specs, strict=True):
            outcome = self._evaluate_rule(rule, spec, timing, silences, now)
            changed += outcome.changed
            self._firing.labels(rule.name).set(outcome.firing)
            if outcome.notes:
                sent.append((rule, outcome.notes))
        if not changed and not sent:
            return []
        entries = [
            e
            for rule, notes in sent
            for e in outbox_entries(rule, notes, self.anomaly, self._external_url)
        ]
        try:
            # State and notifications together: a new leader loads exactly the state that was
            # committed with the notifications, and a crash leaves both or neither.
            refused = await self._outbox.commit(changed, entries, now)
        except StoreError as exc:
            log.error("alert_evaluation_not_saved", error=str(exc), notifications=len(entries))
            self._term = None  # the next evaluation starts from what was committed
            return []
        self._told(sent, refused)
        return [note for _, notes in sent for note in notes]

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
            alert = replace(alert, last_notified_at=now, repeats=alert.repeats + 1)
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

    def _told(
        self, sent: list[tuple[RuleConfig, list[Notification]]], refused: list[OutboxEntry]
    ) -> None:
        """Log what was enqueued and wake the channels' workers; count refused duplicates."""
        for entry in refused:  # another leader enqueued it already (a failover's overlap)
            self._sent.labels(entry.channel, "duplicate").inc()
            log.warning(
                "notification_duplicate_refused", channel=entry.channel, key=entry.idempotency_key
            )
        for rule, notes in sent:
            for note in notes:
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
