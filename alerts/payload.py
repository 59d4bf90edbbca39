"""What a notification carries: one group of alerts in the Alertmanager webhook v4 shape.

The outbox stores this shape and every notifier renders from it (the webhook sends it as is,
Slack turns it into Block Kit), so a receiver that knows Alertmanager knows lookout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lookout.alerts.state import Notification, NotificationKind


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one try of a send came to."""

    delivered: bool
    retry: bool = False  # worth another try
    retry_after_s: float | None = None  # the receiver said when (429/503 Retry-After)
    detail: str = ""
    # Receiver-side ids of what was posted (Slack message ts), for threading later messages.
    message_id: str | None = None


@dataclass(frozen=True, slots=True)
class NotifiedAlert:
    """One alert as a notification tells it: the state change plus its rule's words."""

    notification: Notification
    severity: str
    summary: str
    description: str = ""
    threshold: float | None = None
    dashboard_url: str = ""


def back(value: float | None, threshold: float) -> str:
    """Where a resolved alert's value now is against its threshold: "under", "over" or "at"
    (`{back}` in a rule's `resolved_summary`, e.g. "p95 latency 1.9s, back under 3s")."""
    if value is None:
        return "n/a"
    if value == threshold:
        return "at"
    return "under" if value < threshold else "over"


def resolved_summary(rule: str, metric: str, threshold: float, value: float | None) -> str:
    """The default text of a resolution, a template for `{app}`; never the firing condition."""
    if value is None:
        return f"{rule}: {metric} has no data in the window any more, resolved ({{app}})"
    return f"{rule}: {metric} {{value:.3g}}, back {{back}} {threshold:g} ({{app}})"


def iso(ts: float | None) -> str:
    if ts is None:
        return "0001-01-01T00:00:00Z"
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _alert_json(item: NotifiedAlert) -> dict[str, Any]:
    alert = item.notification.alert
    resolved = item.notification.kind is NotificationKind.RESOLVED
    labels = {"alertname": alert.rule, "severity": item.severity, **dict(alert.labels)}
    annotations = {"summary": item.summary}
    if item.description:
        annotations["description"] = item.description
    if alert.value is not None:
        annotations["value"] = f"{alert.value:g}"
    if item.threshold is not None:
        annotations["threshold"] = f"{item.threshold:g}"
    return {
        "status": "resolved" if resolved else "firing",
        "labels": labels,
        "annotations": annotations,
        "startsAt": iso(alert.active_since),
        "endsAt": iso(alert.resolved_at if resolved else None),
        "generatorURL": item.dashboard_url,
        "fingerprint": alert.fingerprint,
    }


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def group_payload(
    alerts_json: Sequence[dict[str, Any]],
    *,
    receiver: str,
    group_labels: Mapping[str, str],
    external_url: str = "",
) -> dict[str, Any]:
    """The v4 body around already-rendered alerts: common labels and annotations computed."""
    status = "firing" if any(a["status"] == "firing" for a in alerts_json) else "resolved"
    group_material = "\x1f".join(f"{k}={v}" for k, v in sorted(group_labels.items()))
    return {
        "version": "4",
        "status": status,
        "receiver": receiver,
        "groupLabels": dict(group_labels),
        "commonLabels": _common([a["labels"] for a in alerts_json]),
        "commonAnnotations": _common([a["annotations"] for a in alerts_json]),
        "externalURL": external_url,
        "groupKey": f"{receiver}:{hashlib.sha256(group_material.encode()).hexdigest()[:16]}",
        "truncatedAlerts": 0,
        "alerts": list(alerts_json),
    }


def alertmanager_payload(
    alerts: Sequence[NotifiedAlert],
    *,
    receiver: str,
    group_labels: Mapping[str, str] | None = None,
    external_url: str = "",
) -> dict[str, Any]:
    """The Alertmanager webhook v4 body for one group of alerts (one rule, one status)."""
    if not alerts:
        raise ValueError("a notification carries at least one alert")
    if group_labels is None:
        group_labels = {"alertname": alerts[0].notification.alert.rule}
    return group_payload(
        [_alert_json(a) for a in alerts],
        receiver=receiver,
        group_labels=group_labels,
        external_url=external_url,
    )


def merge_payloads(payloads: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several groups as one (a burst on a channel that posts one message for all of them)."""
    if len(payloads) == 1:
        return payloads[0]
    return group_payload(
        [a for p in payloads for a in p["alerts"]],
        receiver=payloads[0]["receiver"],
        group_labels=_common([p["groupLabels"] for p in payloads]),
        external_url=payloads[0]["externalURL"],
    )


def batch_key(keys: Sequence[str]) -> str:
    """One idempotency key for a send that carries several notifications."""
    if len(keys) == 1:
        return keys[0]
    return "batch:" + hashlib.sha256("\x1f".join(sorted(keys)).encode()).hexdigest()[:32]
