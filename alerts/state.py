"""The alert state machine: inactive -> pending -> firing -> resolved, per (rule, labels).

Pure computation: each evaluation feeds one observation (breached or not, or no data) and the
time; the machine returns the new state and the notifications it calls for. Timing follows
Prometheus/Alertmanager: `for` holds a breach pending before it fires, `keep_firing_for` holds a
firing alert through short recoveries, a firing alert notifies again every `repeat_interval`,
and once on resolve.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any


class AlertState(enum.StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


class NoData(enum.StrEnum):
    """What a rule does when its series has no value in the window."""

    OK = "ok"  # as if not breached: a firing alert resolves
    KEEP = "keep"  # no change at all
    ALERT = "alert"  # as if breached


class NotificationKind(enum.StrEnum):
    FIRING = "firing"
    REPEAT = "repeat"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Timing:
    for_s: float = 0.0
    keep_firing_for_s: float = 0.0
    repeat_interval_s: float = 4 * 3600.0


def fingerprint(rule: str, labels: Mapping[str, str]) -> str:
    """Stable across restarts and processes: the rule name and the sorted label pairs."""
    material = "\x1f".join([rule, *(f"{k}\x1e{v}" for k, v in sorted(labels.items()))])
    return hashlib.sha256(material.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Alert:
    """One (rule, labels) alert. Times are epoch seconds; None where not reached yet."""

    rule: str
    labels: tuple[tuple[str, str], ...]
    state: AlertState = AlertState.INACTIVE
    value: float | None = None
    active_since: float | None = None  # when the current episode's breach began (startsAt)
    last_breach_at: float | None = None
    last_notified_at: float | None = None
    resolved_at: float | None = None  # endsAt of the last episode
    muted: bool = False  # its last notification was silenced: tell it when the silence ends
    # Notifications after the first of this episode (repeats, the end of a silence): the k-th
    # one's idempotency key says k, so whichever node sends it, it is the same key.
    repeats: int = 0

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.rule, dict(self.labels))


@dataclass(frozen=True, slots=True)
class Notification:
    kind: NotificationKind
    alert: Alert
    at: float

    @property
    def idempotency_key(self) -> str:
        """The same on every retry of this notification and on whichever node computes it
        (from the stored state, not the evaluation instant), different for the next one."""
        alert = self.alert
        if self.kind is NotificationKind.RESOLVED:
            return f"{alert.fingerprint}:resolved:{alert.active_since}"
        key = f"{alert.fingerprint}:firing:{alert.active_since}"
        return f"{key}:{alert.repeats}" if alert.repeats else key


def step(
    alert: Alert,
    breached: bool | None,
    value: float | None,
    now: float,
    *,
    timing: Timing,
    no_data: NoData = NoData.OK,
) -> tuple[Alert, Notification | None]:
    """Advance `alert` by one evaluation at `now`. `breached` is None when there was no data."""
    if breached is None:
        if no_data is NoData.KEEP:
            return alert, None
        breached = no_data is NoData.ALERT
    state = alert.state
    if breached:
        if state in (AlertState.INACTIVE, AlertState.RESOLVED):
            alert = replace(alert, state=AlertState.PENDING, active_since=now, resolved_at=None)
            state = AlertState.PENDING
        alert = replace(alert, value=value, last_breach_at=now)
        since = alert.active_since if alert.active_since is not None else now
        if state is AlertState.PENDING and now - since >= timing.for_s:
            fired = replace(alert, state=AlertState.FIRING, last_notified_at=now, repeats=0)
            return fired, Notification(NotificationKind.FIRING, fired, now)
        if state is AlertState.FIRING:
            last = alert.last_notified_at if alert.last_notified_at is not None else now
            if now - last >= timing.repeat_interval_s:
                repeated = replace(alert, last_notified_at=now, repeats=alert.repeats + 1)
                return repeated, Notification(NotificationKind.REPEAT, repeated, now)
        return alert, None
    # Not breached.
    if state is AlertState.PENDING:
        return replace(alert, state=AlertState.INACTIVE, active_since=None, value=value), None
    if state is AlertState.FIRING:
        last_breach = alert.last_breach_at if alert.last_breach_at is not None else now
        if now - last_breach < timing.keep_firing_for_s:
            return alert, None
        resolved = replace(
            alert, state=AlertState.RESOLVED, value=value, resolved_at=now, last_notified_at=now
        )
        return resolved, Notification(NotificationKind.RESOLVED, resolved, now)
    return alert, None


_ALERT_FIELDS = frozenset(f.name for f in fields(Alert))


def alert_to_json(alert: Alert) -> str:
    return json.dumps(asdict(alert))


def alert_from_json(text: str) -> Alert:
    """An alert as `alert_to_json` stored it; fields of a later release are ignored and fields
    an earlier release did not store take their defaults."""
    stored: dict[str, Any] = json.loads(text)
    values = {k: v for k, v in stored.items() if k in _ALERT_FIELDS}
    values["labels"] = tuple(tuple(pair) for pair in values["labels"])
    values["state"] = AlertState(values["state"])
    return Alert(**values)
