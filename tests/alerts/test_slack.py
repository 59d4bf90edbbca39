"""The Slack notifier against a real HTTP server on loopback acting as Slack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lookout.alerts.payload import NotifiedAlert, alertmanager_payload, merge_payloads
from lookout.alerts.slack import (
    MAX_BLOCKS,
    MAX_FIELD_CHARS,
    MAX_FIELDS,
    MAX_HEADER_CHARS,
    MAX_SECTION_CHARS,
    SlackNotifier,
    slack_message,
)
from lookout.alerts.state import Alert, Notification, Timing, step
from lookout.clock import FakeClock
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox
from tests.conftest import Receiver

T0 = 1_700_000_000.0


def notes(app: str, value: float = 0.9) -> tuple[Notification, Notification]:
    alert = Alert(rule="errors", labels=(("app", app), ("model", "*")))
    fired, first = step(alert, True, value, T0, timing=Timing())
    _, resolved = step(fired, False, 0.0, T0 + 120, timing=Timing())
    assert first is not None and resolved is not None
    return first, resolved


def payload(*items: Notification, severity: str = "critical", summary: str = "") -> dict[str, Any]:
    return alertmanager_payload(
        [
            NotifiedAlert(
                n,
                severity=severity,
                threshold=0.5,
                summary=summary or f"error rate high ({dict(n.alert.labels)['app']})",
            )
            for n in items
        ],
        receiver="oncall-slack",
        external_url="http://lookout.local:8321",
    )


def all_blocks(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [*message.get("blocks", []), *(b for a in message["attachments"] for b in a["blocks"])]


def test_block_kit_limits_hold_for_a_huge_burst() -> None:
    long_text = "<b>&" + "x" * 9000
    items = [notes(f"app-{i}-" + "y" * 300)[0] for i in range(80)]
    message = slack_message(payload(*items, summary=long_text))
    blocks = all_blocks(message)
    assert len(blocks) <= MAX_BLOCKS
    assert message["text"] and len(message["text"]) <= 3000  # the fallback
    header = blocks[0]
    assert header["type"] == "header" and len(header["text"]["text"]) <= MAX_HEADER_CHARS
    assert "[FIRING:80]" in header["text"]["text"]
    sections = [b for b in blocks if b["type"] == "section"]
    assert sections and all(len(b["text"]["text"]) <= MAX_SECTION_CHARS for b in sections)
    assert all(len(b["fields"]) <= MAX_FIELDS for b in sections)
    assert all(len(f["text"]) <= MAX_FIELD_CHARS for b in sections for f in b["fields"])
    # User text cannot inject mrkdwn links or mentions.
    assert (
        "<b>" not in sections[0]["text"]["text"] and "&lt;b&gt;&amp;" in sections[0]["text"]["text"]
    )
    assert "60 more alerts" in json.dumps(blocks[-1])


def test_colour_and_words_say_severity_and_status() -> None:
    fired, resolved = notes("bot")
    critical = slack_message(payload(fired))
    assert critical["attachments"][0]["color"] == "#E01E5A"
    assert ":red_circle:" in critical["attachments"][0]["blocks"][0]["text"]["text"]
    assert "error rate high (bot)" in critical["text"]
    section = json.dumps(critical["attachments"][0]["blocks"][1])
    assert "0.9 (threshold 0.5)" in section and "<!date^1700000000^" in section
    assert "http://lookout.local:8321" in json.dumps(critical)  # the dashboard link
    assert slack_message(payload(fired, severity="info"))["attachments"][0]["color"] == "#36C5F0"
    done = slack_message(payload(resolved))
    assert done["attachments"][0]["color"] == "#2EB67D" and "[RESOLVED:1]" in done["text"]


async def test_incoming_webhook_delivery_and_answers(receiver: Receiver) -> None:
    receiver.script = [(429, {"Retry-After": "3"}), (500, {}), (404, {})]
    fired, _ = notes("bot")
    async with SlackNotifier(
        "oncall-slack", clock=FakeClock(), webhook_url=receiver.url, min_interval_s=0
    ) as slack:
        limited = await slack.send(payload(fired), "k", T0)
        broken = await slack.send(payload(fired), "k", T0)
        gone = await slack.send(payload(fired), "k", T0)
        ok = await slack.send(payload(fired), "k", T0)
    assert (limited.retry, limited.retry_after_s) == (True, 3.0)
    assert broken.retry and not gone.retry and not gone.delivered
    assert receiver.url not in gone.detail  # the webhook URL is a secret
    assert ok.delivered
    body = json.loads(receiver.requests[-1][1])
    assert body["text"].startswith("[FIRING:1] errors") and body["attachments"][0]["blocks"]


def web_api(receiver: Receiver, answers: list[tuple[int, dict[str, Any]]]) -> None:
    """Slack's Web API: chat.postMessage answers `{"ok": true, "ts": ...}` unless scripted."""
    counter = iter(range(1, 1000))

    def respond(path: str, body: bytes) -> tuple[int, dict[str, str], str]:
        assert path == "/api/chat.postMessage"
        if answers:
            status, answer = answers.pop(0)
            headers = {"Retry-After": "30"} if status == 429 else {}
            return status, {"Content-Type": "application/json", **headers}, json.dumps(answer)
        answer = {"ok": True, "channel": "C1", "ts": f"1700000000.{next(counter):06d}"}
        return 200, {"Content-Type": "application/json"}, json.dumps(answer)

    receiver.respond = respond


async def test_web_api_threads_the_resolved_message_under_the_firing_one(
    receiver: Receiver, tmp_path: Path
) -> None:
    web_api(receiver, [])
    fired_a, resolved_a = notes("a")
    fired_b, resolved_b = notes("b")
    async with SqliteOutbox(tmp_path / "lookout.db") as outbox:
        slack = SlackNotifier(
            "team",
            clock=FakeClock(),
            token="xoxb-test",
            channel="C1",
            api_url=f"{receiver.base_url}/api",
            posted_messages=outbox,
            min_interval_s=0,
        )
        async with slack:
            first = await slack.send(merge_payloads([payload(fired_a), payload(fired_b)]), "k1", T0)
            await slack.send(payload(fired_a), "repeat", T0 + 3600)  # a repeat: not a new parent
            await slack.send(payload(resolved_a), "k2", T0 + 7200)
            await slack.send(merge_payloads([payload(resolved_a), payload(resolved_b)]), "k3", T0)
    assert first.delivered and first.message_id == "1700000000.000001"
    sent = [json.loads(body) for _, body in receiver.requests]
    headers = receiver.requests[0][0]
    assert headers["Authorization"] == "Bearer xoxb-test"
    assert sent[0]["channel"] == "C1" and "thread_ts" not in sent[0]
    assert "[FIRING:2]" in sent[0]["text"]
    assert "thread_ts" not in sent[1]
    assert sent[2]["thread_ts"] == "1700000000.000001"
    assert sent[3]["thread_ts"] == "1700000000.000001"  # both announced in that message


@pytest.mark.parametrize(
    ("status", "answer", "retry", "after"),
    [
        (429, {"ok": False, "error": "ratelimited"}, True, 30.0),
        (200, {"ok": False, "error": "channel_not_found"}, False, None),
        (200, {"ok": False, "error": "internal_error"}, True, None),
        (503, {"ok": False, "error": "service_unavailable"}, True, None),
    ],
)
async def test_web_api_errors(
    receiver: Receiver, status: int, answer: dict[str, Any], retry: bool, after: float | None
) -> None:
    web_api(receiver, [(status, answer)])
    async with SlackNotifier(
        "team",
        clock=FakeClock(),
        token="xoxb-test",
        channel="C1",
        api_url=f"{receiver.base_url}/api/",
        min_interval_s=0,
    ) as slack:
        outcome = await slack.send(payload(notes("bot")[0]), "k", T0)
    assert not outcome.delivered and (outcome.retry, outcome.retry_after_s) == (retry, after)
    assert str(answer["error"]) in outcome.detail and "xoxb" not in outcome.detail


async def test_posts_are_paced_to_one_a_second_per_channel(receiver: Receiver) -> None:
    clock = FakeClock()
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock.advance(seconds)

    async with SlackNotifier(
        "oncall-slack", clock=clock, webhook_url=receiver.url, sleep=sleep
    ) as slack:
        for _ in range(3):
            await slack.send(payload(notes("bot")[0]), "k", T0)
        clock.advance(5)
        await slack.send(payload(notes("bot")[0]), "k", T0)
    assert slept == [1.0, 1.0] and len(receiver.requests) == 4


async def test_notify_test_posts_to_slack(receiver: Receiver, tmp_path: Path) -> None:
    import asyncio
    import sys

    config = tmp_path / "c.yaml"
    config.write_text(
        f"channels:\n  oncall-slack: {{kind: slack, webhook_url: '{receiver.url}'}}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lookout",
        "notify-test",
        "oncall-slack",
        "--config",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0 and b"delivered to oncall-slack: HTTP 200" in out
    [(_, body)] = receiver.requests
    assert "lookout test notification" in json.loads(body)["text"]


def strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return []


@pytest.mark.parametrize(
    "app", ["<!channel>", "<https://evil.example|Open dashboard>", "a & b <@U123>"]
)
def test_labels_and_summaries_cannot_ping_or_forge_links_anywhere(app: str) -> None:
    firing, _ = notes(app)
    body = payload(firing, summary=f"error rate high ({app})")
    body["externalURL"] = "https://x.example/?a=1|Forged>"
    body["alerts"][0]["generatorURL"] = "https://x.example/g>|<!here>"
    message = slack_message(body)
    for text in strings(message):
        assert "<!channel>" not in text and "<!here>" not in text and "<@U123>" not in text
        assert "<https://evil" not in text and "|Forged" not in text
    assert app.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;") in message["text"]
    assert message["attachments"][0]["fallback"] == message["text"]
