"""Rules to receiver, end to end: records in, a signed webhook out, retried until delivered."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import httpx

from lookout.alerts.webhook import verify
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.conftest import Receiver, eventually, running, sample_value


def alerting_settings(settings_for: Callable[..., Settings], receiver: Receiver) -> Settings:
    base = settings_for()
    return Settings.model_validate(
        {
            **base.model_dump(mode="python", by_alias=True, exclude={"channels", "rules"}),
            "bus": {**base.bus.model_dump(), "password": None},
            "eval_interval": 0.05,
            "channels": {"hook": {"kind": "webhook", "url": receiver.url, "secret": "k"}},
            "rules": [
                {
                    "name": "errors",
                    "metric": "error_rate",
                    "where": {"app": "bot"},
                    "window": 60,
                    "op": ">",
                    "threshold": 0.5,
                    "severity": "critical",
                    "channels": ["hook"],
                    "summary": "error rate {value:.0%} ({app})",
                },
            ],
        }
    )


def api(d: Daemon) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}")  # type: ignore[union-attr]


async def post(d: Daemon, records: list[dict[str, object]]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
        assert (await http.post("/api/v1/records", json=records)).status_code == 200


async def test_a_breach_fires_a_signed_webhook_then_resolves(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    async with running(Daemon(alerting_settings(settings_for, receiver))) as d:
        await post(d, [{"app": "bot", "error": "boom"}] * 3)
        await asyncio.wait_for(receiver.received.wait(), 15)
        headers, body = receiver.requests[0]
        assert verify("k", headers["X-Lookout-Timestamp"], body, headers["X-Lookout-Signature"])
        sent = json.loads(body)
        assert sent["status"] == "firing"
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            [listed] = (await http.get("/api/v1/alerts")).json()
        assert (listed["rule"], listed["state"], listed["labels"]["app"]) == (
            "errors",
            "firing",
            "bot",
        )
        assert sent["commonAnnotations"]["summary"] == "error rate 100% (bot)"
        receiver.received.clear()
        await post(d, [{"app": "bot"}] * 10)  # error rate 3/13: resolved
        await asyncio.wait_for(receiver.received.wait(), 15)
        assert json.loads(receiver.requests[-1][1])["status"] == "resolved"
        assert sample_value(d, "lookout_alerts_firing", {"rule": "errors"}) == 0
    assert len(receiver.requests) == 2


async def test_a_failing_receiver_gets_it_once_delivered_with_one_key(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    receiver.script = [(500, {}), (429, {"Retry-After": "1"})]
    async with running(Daemon(alerting_settings(settings_for, receiver))) as d:
        await post(d, [{"app": "bot", "error": "boom"}])
        labels = {"channel": "hook", "outcome": "delivered"}

        async def third_request() -> None:
            while len(receiver.requests) < 3:
                receiver.received.clear()
                await receiver.received.wait()

        await asyncio.wait_for(third_request(), 30)
        await eventually(lambda: sample_value(d, "lookout_notifications_total", labels) == 1)
        assert (
            sample_value(d, "lookout_notifications_total", {"channel": "hook", "outcome": "retry"})
            == 2
        )
    assert len(receiver.requests) == 3
    assert len({h["Idempotency-Key"] for h, _ in receiver.requests}) == 1


async def test_alert_state_survives_a_restart(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = alerting_settings(settings_for, receiver)
    rules = [settings.rules[0].model_copy(update={"no_data": "keep"})]
    settings = settings.model_copy(update={"rules": rules})
    async with running(Daemon(settings)) as d:
        await post(d, [{"app": "bot", "error": "boom"}])
        await asyncio.wait_for(receiver.received.wait(), 15)
    again = Daemon(settings)
    async with running(again) as d2:
        assert d2.alerts is not None
        d2.alerts.evaluated.clear()
        await asyncio.wait_for(d2.alerts.evaluated.wait(), 15)
        [alert] = d2.alerts.alerts()
        assert alert.state.value == "firing"
        assert sample_value(d2, "lookout_alerts_firing", {"rule": "errors"}) == 1
    # Restored, not re-fired: one notification (a send cut short by the stop may be retried,
    # at least once, under the same idempotency key).
    assert len({h["Idempotency-Key"] for h, _ in receiver.requests}) == 1


async def test_a_silence_mutes_notifications_but_not_state(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    bad_body = {"matchers": {"app": "bot"}, "duration": "-5m"}
    body = {"rule": "errors", "matchers": {"app": "bot"}, "duration": "1h", "comment": "deploy"}
    async with running(Daemon(alerting_settings(settings_for, receiver))) as d, api(d) as http:
        assert (await http.post("/api/v1/silences", json=bad_body)).status_code == 400
        made = await http.post("/api/v1/silences", json=body)
        assert made.status_code == 201
        silence_id = made.json()["id"]
        await post(d, [{"app": "bot", "error": "boom"}])
        silenced = {"channel": "hook", "outcome": "silenced"}
        await eventually(lambda: sample_value(d, "lookout_notifications_total", silenced) == 1)
        [alert] = (await http.get("/api/v1/alerts")).json()
        assert alert["state"] == "firing"
        [listed] = (await http.get("/api/v1/silences")).json()
        assert listed["comment"] == "deploy"
        assert receiver.requests == []
        assert (await http.delete(f"/api/v1/silences/{silence_id}")).status_code == 200
        assert (await http.delete(f"/api/v1/silences/{silence_id}")).status_code == 404
        await asyncio.wait_for(receiver.received.wait(), 15)  # told once the silence ends
    assert len(receiver.requests) == 1


async def test_silence_command_applies_to_a_running_daemon(
    settings_for: Callable[..., Settings], receiver: Receiver, tmp_path: Path
) -> None:
    settings = alerting_settings(settings_for, receiver)
    config = tmp_path / "cli.yaml"
    config.write_text(f"store: {{url: '{settings.store.url}'}}\n")

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lookout",
            "silence",
            *args,
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0
        return out.decode()

    async with running(Daemon(settings)) as d:
        added = await cli("add", "--match", "app=bot", "--for", "30m", "--comment", "maintenance")
        silence_id = added.split()[1]
        assert "maintenance" in await cli("list")
        await post(d, [{"app": "bot", "error": "boom"}])
        silenced = {"channel": "hook", "outcome": "silenced"}
        await eventually(lambda: sample_value(d, "lookout_notifications_total", silenced) == 1)
        assert receiver.requests == []
        assert f"silence {silence_id} expired" in await cli("expire", silence_id)
        # Still firing when the silence ends: told then, once.
        await asyncio.wait_for(receiver.received.wait(), 15)
    [(_, body)] = receiver.requests
    assert json.loads(body)["status"] == "firing"


def test_a_summary_without_a_value_says_so() -> None:
    from lookout.alerts.engine import render

    template = "{value:.0%} of prompts out of distribution ({app})"
    assert (
        render(template, {"value": None, "app": "bot"})
        == "n/a of prompts out of distribution (bot)"
    )
    assert (
        render(template, {"value": 0.25, "app": "bot"})
        == "25% of prompts out of distribution (bot)"
    )
    assert render("{value:.1f} {nope}", {"value": 2}) == "2.0 {nope}"
