"""What a notification says: a rule's texts filled from the alert, and the outbox entries one
evaluation's notifications of a rule make (grouped, one per channel, keyed the same on any
node)."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from lookout.alerts.anomaly import usual_text
from lookout.alerts.outbox import OutboxEntry
from lookout.alerts.payload import NotifiedAlert, alertmanager_payload, back, resolved_summary
from lookout.alerts.state import Notification, NotificationKind

if TYPE_CHECKING:
    from lookout.alerts.anomaly import AnomalyReadings
    from lookout.alerts.config import RuleConfig


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


def notified(
    rule: RuleConfig, note: Notification, anomaly: AnomalyReadings | None, external_url: str
) -> NotifiedAlert:
    labels = dict(note.alert.labels)
    value = note.alert.value
    threshold = rule.anomaly_z if rule.op == "anomaly" else rule.threshold
    reading = None
    if rule.op == "anomaly" and anomaly is not None:
        reading = anomaly.last.get((rule.name, note.alert.labels))
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
    if external_url:
        dashboard = f"{external_url}/?app={quote(labels.get('app', ''))}"
    return NotifiedAlert(
        note,
        severity=rule.severity,
        summary=render(template, values),
        description=render(rule.description, values),
        threshold=threshold,
        dashboard_url=dashboard,
    )


def outbox_entries(
    rule: RuleConfig,
    notes: list[Notification],
    anomaly: AnomalyReadings | None,
    external_url: str,
) -> list[OutboxEntry]:
    """One notification per channel for each group: alerts of the rule that share status
    and the values of `group_by`, so a burst across many apps is one message per group."""
    groups: dict[tuple[bool, tuple[str, ...]], list[Notification]] = defaultdict(list)
    for note in notes:
        labels = dict(note.alert.labels)
        values = tuple(labels.get(name, "") for name in rule.group_by)
        groups[(note.kind is NotificationKind.RESOLVED, values)].append(note)
    entries: list[OutboxEntry] = []
    for (_, values), members in groups.items():
        group_labels = {"alertname": rule.name, **dict(zip(rule.group_by, values, strict=True))}
        line = hashlib.sha256("\x1f".join([rule.name, *values]).encode()).hexdigest()[:16]
        if len(members) == 1:
            key = members[0].idempotency_key
        else:  # the members' keys, so the same group has the same key on any node
            material = "\x1f".join(sorted(n.idempotency_key for n in members))
            key = f"group:{line}:{hashlib.sha256(material.encode()).hexdigest()[:24]}"
        items = [notified(rule, n, anomaly, external_url) for n in members]
        for channel in rule.channels:
            payload = alertmanager_payload(
                items,
                receiver=channel,
                group_labels=group_labels,
                external_url=external_url,
            )
            entries.append(OutboxEntry(channel, key, payload, ordering_key=line))
    return entries
