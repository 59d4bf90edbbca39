"""The alert state machine, driven by a fake clock one evaluation at a time."""

from __future__ import annotations

from collections.abc import Sequence

from lookout.alerts.state import (
    Alert,
    AlertState,
    NoData,
    Notification,
    NotificationKind,
    Timing,
    fingerprint,
    step,
)

EVAL_S = 10.0
T0 = 1_700_000_000.0


def run(
    breaches: Sequence[bool | None], timing: Timing, no_data: NoData = NoData.OK
) -> tuple[Alert, list[tuple[float, NotificationKind]]]:
    """Feed one observation per evaluation interval; return the end state and what was sent."""
    alert = Alert(rule="high-latency", labels=(("app", "bot"),))
    sent: list[tuple[float, NotificationKind]] = []
    for i, breached in enumerate(breaches):
        now = T0 + i * EVAL_S
        value = 2.5 if breached else 0.4
        alert, note = step(alert, breached, value, now, timing=timing, no_data=no_data)
        if note is not None:
            sent.append((now - T0, note.kind))
    return alert, sent


def test_breach_held_for_fires_once_repeats_and_resolves_once() -> None:
    timing = Timing(for_s=60, repeat_interval_s=300)
    # 6 evaluations pending (0..50 s), fires at 60 s, breach held to 700 s, then clear.
    alert, sent = run([True] * 71 + [False] * 5, timing)
    assert sent == [
        (60.0, NotificationKind.FIRING),
        (360.0, NotificationKind.REPEAT),
        (660.0, NotificationKind.REPEAT),
        (710.0, NotificationKind.RESOLVED),
    ]
    assert alert.state is AlertState.RESOLVED
    assert alert.active_since == T0 and alert.resolved_at == T0 + 710


def test_a_breach_shorter_than_for_sends_nothing() -> None:
    alert, sent = run([True] * 5 + [False] + [True] * 5 + [False] * 3, Timing(for_s=60))
    assert sent == []
    assert alert.state is AlertState.INACTIVE


def test_flapping_inside_keep_firing_for_sends_nothing_extra() -> None:
    timing = Timing(for_s=0, keep_firing_for_s=30)
    pattern = [True, False, False, True, False, True, False, False, True] + [False] * 4
    alert, sent = run(pattern, timing)
    assert [kind for _, kind in sent] == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    # Resolved only once the breach had been gone for keep_firing_for.
    assert sent[-1][0] == 80.0 + 30.0
    assert alert.state is AlertState.RESOLVED


def test_a_new_breach_after_resolve_is_a_new_episode() -> None:
    alert, sent = run([True, False, True], Timing(for_s=0))
    assert [kind for _, kind in sent] == [
        NotificationKind.FIRING,
        NotificationKind.RESOLVED,
        NotificationKind.FIRING,
    ]
    assert alert.active_since == T0 + 20


def test_no_data_policies() -> None:
    timing = Timing(for_s=0)
    _, ok = run([True, None], timing, NoData.OK)
    assert [k for _, k in ok] == [NotificationKind.FIRING, NotificationKind.RESOLVED]
    kept, keep = run([True, None, None], timing, NoData.KEEP)
    assert [k for _, k in keep] == [NotificationKind.FIRING]
    assert kept.state is AlertState.FIRING
    _, alerting = run([None, None], timing, NoData.ALERT)
    assert [k for _, k in alerting] == [NotificationKind.FIRING]


def test_fingerprint_is_stable_and_ignores_label_order() -> None:
    a = fingerprint("high-latency", {"app": "bot", "model": "gpt-4o"})
    b = fingerprint("high-latency", {"model": "gpt-4o", "app": "bot"})
    # Pinned: fingerprints are stored with alert state and sent to receivers.
    assert a == b == "90d9636caa20d948"
    assert a != fingerprint("high-latency", {"app": "shop", "model": "gpt-4o"})
    assert a != fingerprint("error-rate", {"app": "bot", "model": "gpt-4o"})


def test_idempotency_key_is_per_notification() -> None:
    alert = Alert(rule="r", labels=(("app", "bot"),))
    fired, first = step(alert, True, 1.0, T0, timing=Timing())
    assert isinstance(first, Notification)
    again = Notification(first.kind, first.alert, first.at)
    assert again.idempotency_key == first.idempotency_key
    _, resolved = step(fired, False, 0.0, T0 + 10, timing=Timing())
    assert resolved is not None
    assert resolved.idempotency_key != first.idempotency_key
