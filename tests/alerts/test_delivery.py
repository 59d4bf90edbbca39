"""Grouping, bursts, ordering and stopping: the paths between the state machine and receivers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from lookout.alerts.config import RuleConfig
from lookout.alerts.engine import AlertEngine
from lookout.alerts.state import Alert, NotificationKind, Timing, step
from lookout.clock import FakeClock
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.metrics.windows import WindowedMetrics
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox
from tests.alerts.test_engine import post
from tests.conftest import Receiver, eventually, running

T0 = 1_700_000_000.0


def with_rules(
    settings_for: Callable[..., Settings], channels: dict[str, object], rule: dict[str, object]
) -> Settings:
    base = settings_for()
    return Settings.model_validate(
        {
            **base.model_dump(mode="python", by_alias=True, exclude={"channels", "rules"}),
            "bus": {**base.bus.model_dump(), "password": None},
            "eval_interval": 0.05,
            "channels": channels,
            "rules": [
                {
                    "name": "errors",
                    "metric": "error_rate",
                    "window": 60,
                    "threshold": 0.5,
                    "channels": list(channels),
                    **rule,
                }
            ],
        }
    )


async def test_group_by_puts_a_burst_across_apps_in_one_webhook(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = with_rules(
        settings_for, {"hook": {"kind": "webhook", "url": receiver.url}}, {"group_by": []}
    )
    async with running(Daemon(settings)) as d:
        await post(d, [{"app": app, "error": "boom"} for app in ("a", "b", "c")])
        await asyncio.wait_for(receiver.received.wait(), 15)
    [(_, body)] = receiver.requests
    sent = json.loads(body)
    assert sent["groupLabels"] == {"alertname": "errors"}
    assert sorted(a["labels"]["app"] for a in sent["alerts"]) == ["a", "b", "c"]
    assert sent["commonLabels"] == {"alertname": "errors", "severity": "warning", "model": "*"}


async def test_a_burst_on_slack_is_one_message(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    # The default group_by [app] makes one notification per app; Slack merges the burst.
    slack = {"kind": "slack", "webhook_url": receiver.url}
    settings = with_rules(settings_for, {"oncall-slack": slack}, {})
    async with running(Daemon(settings)) as d:
        await post(d, [{"app": f"app-{i}", "error": "boom"} for i in range(6)])
        await asyncio.wait_for(receiver.received.wait(), 15)
        assert d.outbox is not None
        await eventually(lambda: _depth(d))
    [(_, body)] = receiver.requests
    message = json.loads(body)
    assert message["text"].startswith("[FIRING:6] errors")


def _depth(d: Daemon) -> bool:
    from tests.conftest import sample_value

    return sample_value(d, "lookout_outbox_depth", {}) == 0


async def test_a_send_under_way_at_stop_finishes(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    receiver.hold = asyncio.Event()
    settings = with_rules(
        settings_for, {"hook": {"kind": "webhook", "url": receiver.url}}, {"where": {"app": "bot"}}
    )
    daemon = Daemon(settings)
    async with running(daemon) as d:
        await post(d, [{"app": "bot", "error": "boom"}])
        await asyncio.wait_for(receiver.arrived.wait(), 15)
        # Stop while the receiver holds its answer; it answers a moment into the stop.
        asyncio.get_running_loop().call_later(0.2, receiver.hold.set)
    assert len(receiver.requests) == 1
    async with SqliteOutbox(Path(settings.store.url.removeprefix("sqlite:///"))) as outbox:
        assert await outbox.depth() == (0, None)  # delivered, not left to resend


async def test_after_a_restart_missing_data_waits_one_window_before_resolving(
    tmp_path: Path,
) -> None:
    clock = FakeClock(T0)
    rule = RuleConfig.model_validate(
        {
            "name": "errors",
            "metric": "error_rate",
            "window": 60,
            "where": {"app": "bot"},
            "threshold": 0.5,
        }
    )
    fired, _ = step(
        Alert("errors", (("app", "bot"), ("model", "*"))), True, 1.0, T0 - 30, timing=Timing()
    )
    async with SqliteOutbox(tmp_path / "lookout.db") as outbox:
        await outbox.save_alerts([fired])
        engine = AlertEngine(
            [rule],
            {},
            series=WindowedMetrics(started_at=T0).points,
            outbox=outbox,
            clock=clock,
            registry=CollectorRegistry(),
            eval_interval_s=3600,
        )
        async with engine.running():
            # The windows are empty because lookout just started, not because the app is fine.
            assert await engine.evaluate(T0 + 30) == []
            assert [a.state.value for a in engine.alerts()] == ["firing"]
            [note] = await engine.evaluate(T0 + 61)
            assert note.kind is NotificationKind.RESOLVED


async def test_a_silence_mutes_then_expires_and_the_alert_is_told(tmp_path: Path) -> None:
    from lookout.alerts.outbox import Silence

    clock = FakeClock(T0)
    windows = WindowedMetrics(started_at=T0 - 600, max_window_s=600)
    rule = RuleConfig.model_validate(
        {
            "name": "errors",
            "metric": "error_rate",
            "window": 600,
            "where": {"app": "bot"},
            "threshold": 0.5,
        }
    )
    async with SqliteOutbox(tmp_path / "lookout.db") as outbox:
        await outbox.add_silence(Silence("s1", "errors", {"app": "bot"}, T0, T0 + 60))
        engine = AlertEngine(
            [rule],
            {},
            series=windows.points,
            outbox=outbox,
            clock=clock,
            registry=CollectorRegistry(),
            eval_interval_s=3600,
        )
        async with engine.running():
            windows.observe(windows.labels_for("bot", "m"), T0 + 1, True, 100.0, None, 1, 1, 0.0)
            assert await engine.evaluate(T0 + 10) == []  # fired, muted
            assert [a.state.value for a in engine.alerts()] == ["firing"]
            assert await engine.evaluate(T0 + 30) == []
            [told] = await engine.evaluate(T0 + 61)  # the silence ended; still firing
            assert told.kind is NotificationKind.FIRING
            assert await engine.evaluate(T0 + 70) == []  # once
