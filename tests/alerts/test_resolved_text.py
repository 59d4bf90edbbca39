"""A resolution tells where the value is now, never the firing condition: in the webhook's
summary and in the Slack message made from the same payload."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from lookout.alerts.payload import back, resolved_summary
from lookout.alerts.slack import slack_message
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.alerts.test_engine import alerting_settings, post
from tests.conftest import Receiver, running


def test_back_says_where_the_value_is() -> None:
    assert [back(1.9, 3.0), back(3.0, 3.0), back(4.0, 3.0), back(None, 3.0)] == [
        "under",
        "at",
        "over",
        "n/a",
    ]
    assert resolved_summary("slow", "latency_p95", 3.0, 1.9) == (
        "slow: latency_p95 {value:.3g}, back {back} 3 ({app})"
    )


async def test_resolved_notification_states_the_value_against_the_threshold(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = alerting_settings(settings_for, receiver)
    custom = settings.rules[0].model_copy(
        update={"resolved_summary": "error rate {value:.0%}, back {back} {threshold:.0%} ({app})"}
    )
    default = settings.rules[0].model_copy(update={"name": "errors-default", "summary": ""})
    settings = settings.model_copy(update={"rules": [custom, default]})
    async with running(Daemon(settings)) as d:
        await post(d, [{"app": "bot", "error": "boom"}] * 3)
        while len(receiver.requests) < 2:
            receiver.received.clear()
            await asyncio.wait_for(receiver.received.wait(), 15)
        firing = {
            json.loads(b)["groupLabels"]["alertname"]: json.loads(b) for _, b in receiver.requests
        }
        assert firing["errors"]["commonAnnotations"]["summary"] == "error rate 100% (bot)"
        assert firing["errors-default"]["commonAnnotations"]["summary"] == (
            "errors-default: error_rate > 0.5 (bot)"
        )
        await post(d, [{"app": "bot"}] * 10)  # error rate 3/13
        while len(receiver.requests) < 4:
            receiver.received.clear()
            await asyncio.wait_for(receiver.received.wait(), 15)
    resolved = {
        p["groupLabels"]["alertname"]: p for p in (json.loads(b) for _, b in receiver.requests[2:])
    }
    custom_text = resolved["errors"]["commonAnnotations"]["summary"]
    assert custom_text == "error rate 23%, back under 50% (bot)"
    assert resolved["errors-default"]["commonAnnotations"]["summary"] == (
        "errors-default: error_rate 0.231, back under 0.5 (bot)"
    )
    slack = slack_message(resolved["errors"])
    assert slack["text"] == "[RESOLVED:1] errors: error rate 23%, back under 50% (bot)"
    section = slack["attachments"][0]["blocks"][1]["text"]["text"]
    assert section == "*error rate 23%, back under 50% (bot)*"
