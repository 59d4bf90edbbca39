"""The webhook notifier against a real HTTP receiver on loopback."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import httpx

from lookout.alerts.payload import NotifiedAlert, alertmanager_payload
from lookout.alerts.state import Alert, Timing, step
from lookout.alerts.webhook import WebhookNotifier, retry_after_s, verify
from tests.conftest import Receiver, free_port

T0 = 1_700_000_000.0


def firing() -> tuple[dict[str, object], str]:
    alert = Alert(rule="high-latency", labels=(("app", "bot"), ("model", "*")))
    _, note = step(alert, True, 2.7, T0, timing=Timing())
    assert note is not None
    item = NotifiedAlert(note, severity="critical", summary="p95 2.70s > 2s (bot)", threshold=2.0)
    payload = alertmanager_payload(
        [item], receiver="pager-hook", external_url="http://lookout.local"
    )
    return payload, note.idempotency_key


async def test_posts_signed_alertmanager_v4(receiver: Receiver) -> None:
    payload, key = firing()
    async with httpx.AsyncClient() as client:
        notifier = WebhookNotifier(client, receiver.url, secret="s3cret", headers={"X-Team": "ml"})
        outcome = await notifier.send(payload, key, T0)
    assert outcome.delivered
    [(headers, body)] = receiver.requests
    assert verify("s3cret", headers["X-Lookout-Timestamp"], body, headers["X-Lookout-Signature"])
    assert not verify("wrong", headers["X-Lookout-Timestamp"], body, headers["X-Lookout-Signature"])
    assert headers["Idempotency-Key"] == key and headers["X-Team"] == "ml"
    sent = json.loads(body)
    assert sent["version"] == "4" and sent["status"] == "firing"
    assert set(sent) >= {
        "receiver",
        "groupLabels",
        "commonLabels",
        "commonAnnotations",
        "externalURL",
        "alerts",
    }
    [alert] = sent["alerts"]
    assert alert["labels"] == {
        "alertname": "high-latency",
        "severity": "critical",
        "app": "bot",
        "model": "*",
    }
    assert alert["startsAt"] == "2023-11-14T22:13:20Z"
    assert alert["annotations"]["value"] == "2.7" and alert["fingerprint"]


async def test_retryable_and_final_answers(receiver: Receiver) -> None:
    payload, key = firing()
    receiver.script = [(500, {}), (429, {"Retry-After": "7"}), (404, {})]
    async with httpx.AsyncClient() as client:
        notifier = WebhookNotifier(client, receiver.url)
        first = await notifier.send(payload, key, T0)
        second = await notifier.send(payload, key, T0)
        third = await notifier.send(payload, key, T0)
        refused = await WebhookNotifier(client, f"http://127.0.0.1:{free_port()}/x").send(
            payload, key, T0
        )
    assert (first.delivered, first.retry) == (False, True)
    assert (second.retry, second.retry_after_s) == (True, 7.0)
    assert (third.delivered, third.retry) == (False, False)
    assert refused.retry and refused.detail == "ConnectError"
    assert {h["Idempotency-Key"] for h, _ in receiver.requests} == {key}


def test_retry_after_as_http_date() -> None:
    assert retry_after_s("Wed, 15 Nov 2023 00:00:10 GMT", 1700006400.0) == 10.0
    assert retry_after_s("soon", T0) is None


async def test_notify_test_command_reports_the_receivers_answer(
    receiver: Receiver, tmp_path: Path
) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"channels:\n  hook: {{kind: webhook, url: '{receiver.url}', secret: s}}\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lookout",
        "notify-test",
        "hook",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and b"delivered to hook: HTTP 200" in out
    [(headers, body)] = receiver.requests
    assert verify("s", headers["X-Lookout-Timestamp"], body, headers["X-Lookout-Signature"])
    assert json.loads(body)["alerts"][0]["labels"]["alertname"] == "lookout-test"
