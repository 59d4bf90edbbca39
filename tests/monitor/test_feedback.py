"""Users' feedback: the wire format, the series, and the daemon over a real broker and HTTP."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage

from lookout.monitor.config import FeedbackConfig, Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.ingest.feedback import app_from_feedback_topic, decode_feedback
from lookout.monitor.ingest.records import DecodeLimits
from lookout.monitor.metrics.feedback import FeedbackWindows
from lookout_client import LookoutCallbackHandler, RecordPublisher, publish_record
from tests.conftest import Receiver, eventually, publish, running, sample_value, status_of
from tests.stores import StoreDb


def decode(payload: Any, topic_app: str | None = None) -> Any:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return decode_feedback(body, topic_app, 100.0, DecodeLimits(), 50)


def test_wire_format_accepts_events_and_says_why_it_rejects_others() -> None:
    good = {"record_id": "r1", "key": "thumbs", "score": 0, "comment": "meh", "user_id": "u1"}
    decoded = decode([good, {"record_id": "r2", "key": "rating", "score": 4, "app": "a"}], "bot")
    assert [(e.app, e.record_id, e.key, e.score, e.user_id) for e in decoded.events] == [
        ("bot", "r1", "thumbs", 0.0, "u1"),
        ("a", "r2", "rating", 4.0, ""),
    ]
    assert decoded.events[0].ts == 100.0  # receive time when absent
    reasons = [
        r.reason.value
        for r in decode(
            [
                {"key": "thumbs", "score": 1},
                {"record_id": "r", "key": "k", "score": 1e12},
                {"record_id": "r", "key": "k", "score": "good"},
                {"record_id": "r", "key": "k", "score": 1, "comment": "x" * 51},
                {"record_id": "r", "key": "k", "score": 1, "ts": "yesterday"},
                7,
            ]
        ).rejections
    ]
    assert reasons == [
        "missing_field",
        "out_of_range",
        "wrong_type",
        "too_large",
        "invalid_value",
        "not_an_object",
    ]
    assert decode(b"{nope").rejections[0].reason.value == "invalid_json"
    assert decode(b'{"record_id": "\xff"}').rejections[0].reason.value == "invalid_utf8"
    assert app_from_feedback_topic("llm/feedback/shop/eu", ["llm/feedback/#"]) == "shop"
    assert app_from_feedback_topic("fb/shop", ["fb/+"]) == "shop"
    assert app_from_feedback_topic("other/shop", ["llm/feedback/#"]) is None


def test_series_equal_hand_computed_values_and_keys_are_capped() -> None:
    cfg = FeedbackConfig(negative_at={"rating": 2})
    windows = FeedbackWindows(bucket_s=10, max_window_s=600, max_keys=2)

    def observe(key: str, score: float, now: float) -> None:
        windows.observe("bot", key, score, cfg.negative(key, score), now)

    for i, score in enumerate([1, 0, 1, 1, 0]):
        observe("thumbs", score, 1000.0 + i)
    for score in (5, 4, 2, 1):
        observe("rating", score, 1100.0)
    observe("thumbs", 0, 500.0)  # before the 5-minute window: not counted
    observe("resolved", 0, 1100.0)  # a third key: under `other`
    got = {(p.metric, dict(p.labels)["key"]): p.value for p in windows.points(300, 1120.0)}
    assert got == {
        ("feedback_count", "thumbs"): 5.0,
        ("feedback_score", "thumbs"): pytest.approx(3 / 5),
        ("negative_feedback_rate", "thumbs"): pytest.approx(2 / 5),
        ("feedback_count", "rating"): 4.0,
        ("feedback_score", "rating"): pytest.approx(12 / 4),
        ("negative_feedback_rate", "rating"): pytest.approx(2 / 4),
        ("feedback_count", "other"): 1.0,
        ("feedback_score", "other"): 0.0,
        ("negative_feedback_rate", "other"): 1.0,
    }


def http(d: Daemon) -> httpx.AsyncClient:
    assert d.api is not None
    return httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{d.api.port}", headers={"Content-Type": "application/json"}
    )


def feedback_settings(settings_for: Callable[..., Settings], **extra: Any) -> Settings:
    """The test's own trees: llm/records/<root>/# and llm/feedback/<root>/#."""
    return settings_for(detectors={"enabled": False}, **extra)


def series_of(d: Daemon) -> dict[tuple[str, str, str], float | None]:
    return {(p["metric"], p["app"], p["key"]): p["value"] for p in status_of(d)["feedback"]}


async def test_feedback_before_and_after_its_record_is_joined_and_redacted(
    settings_for: Callable[..., Settings], topic_root: str, store_db: StoreDb
) -> None:
    settings = feedback_settings(settings_for, store={"url": store_db.url})
    async with running(Daemon(settings)) as d, http(d) as api:
        before = {"record_id": "r1", "key": "thumbs", "score": 0, "user_id": "u1"}
        before["comment"] = "wrong again, mail me at jane.doe@example.com"
        await publish([json.dumps(before).encode()], f"llm/feedback/{topic_root}")
        await eventually(lambda: sample_value(d, "lookout_feedback_accepted_total") == 1, d)
        record = {"id": "r1", "prompt": "hi", "response": "hello", "latency_ms": 10}
        await publish([json.dumps(record).encode()], f"llm/records/{topic_root}")
        after = {"record_id": "r1", "key": "rating", "score": 4, "value": "good", "user_id": "u2"}
        await publish([json.dumps(after).encode()], f"llm/feedback/{topic_root}")
        await eventually(lambda: sample_value(d, "lookout_feedback_accepted_total") == 2, d)
        await d.store.flush()
        got = (await api.get("/api/v1/records/r1")).json()
    assert got["app"] == topic_root and got["prompt"] == "hi"
    assert [(f["key"], f["score"], f["user_id"]) for f in got["feedback"]] == [
        ("thumbs", 0.0, "u1"),
        ("rating", 4.0, "u2"),
    ]
    assert got["feedback"][0]["comment"] == "wrong again, mail me at [EMAIL]"
    assert got["feedback"][1]["value"] == "good"


async def test_feedback_for_a_record_never_stored_and_duplicates_counted_once(
    settings_for: Callable[..., Settings], topic_root: str, store_db: StoreDb
) -> None:
    settings = feedback_settings(settings_for, store={"url": store_db.url})
    event = {"record_id": "ghost", "app": "shop", "key": "thumbs", "score": 0, "user_id": "u9"}
    async with running(Daemon(settings)) as d, http(d) as api:
        first = await api.post("/api/v1/feedback", content=json.dumps(event))
        assert first.status_code == 200 and first.json()["accepted"] == 1
        # The same event redelivered on the bus, then retried over HTTP: counted once.
        await publish([json.dumps(event).encode()], f"llm/feedback/{topic_root}")
        await eventually(lambda: sample_value(d, "lookout_feedback_duplicate_total") == 1, d)
        again = (await api.post("/api/v1/feedback", content=json.dumps(event))).json()
        assert (again["accepted"], again["duplicates"]) == (0, 1)
        bad = await api.post("/api/v1/feedback", content=json.dumps({"key": "thumbs"}))
        assert bad.status_code == 400 and bad.json()["rejected"][0]["reason"] == "missing_field"
        assert (await api.get("/api/v1/records/ghost")).status_code == 404
        assert series_of(d)[("feedback_count", "shop", "thumbs")] == 1.0
        stored = await d.store.feedback.for_record("shop", "ghost")
        assert [(f.key, f.user_id) for f in stored] == [("thumbs", "u9")]
    # After a restart the stored event still counts, and its redelivery is still a duplicate.
    async with running(Daemon(settings)) as d2, http(d2) as api:
        assert series_of(d2)[("feedback_count", "shop", "thumbs")] == 1.0
        again = (await api.post("/api/v1/feedback", content=json.dumps(event))).json()
        assert (again["accepted"], again["duplicates"]) == (0, 1)
        assert len(await d2.store.feedback.for_record("shop", "ghost")) == 1


async def test_series_on_a_known_stream_in_status_and_metrics(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    settings = feedback_settings(settings_for, feedback={"negative_at": {"rating": 2}})
    scores = {"thumbs": [1, 1, 0, 1, 0, 0, 1, 1], "rating": [5, 3, 2, 1, 4]}
    events = [
        {"record_id": f"r{i}", "key": key, "score": s}
        for key, values in scores.items()
        for i, s in enumerate(values)
    ]
    async with running(Daemon(settings)) as d, http(d) as api:
        await publish([json.dumps(events).encode()], f"llm/feedback/{topic_root}")
        await eventually(lambda: sample_value(d, "lookout_feedback_accepted_total") == 13, d)
        metrics = (await api.get("/metrics")).text
        series = series_of(d)
    app = topic_root
    assert series[("feedback_count", app, "thumbs")] == 8.0
    assert series[("feedback_score", app, "thumbs")] == pytest.approx(5 / 8)
    assert series[("negative_feedback_rate", app, "thumbs")] == pytest.approx(3 / 8)
    assert series[("feedback_score", app, "rating")] == pytest.approx(15 / 5)
    assert series[("negative_feedback_rate", app, "rating")] == pytest.approx(2 / 5)
    assert f'lookout_feedback_negative_ratio{{app="{app}",key="thumbs"}} 0.375' in metrics


async def test_a_rule_on_negative_feedback_rate_notifies_a_webhook(
    settings_for: Callable[..., Settings], topic_root: str, receiver: Receiver
) -> None:
    settings = feedback_settings(
        settings_for,
        eval_interval="100ms",
        channels={"hook": {"kind": "webhook", "url": receiver.url}},
        rules=[
            {
                "name": "users-unhappy",
                "metric": "negative_feedback_rate",
                "where": {"key": "thumbs"},
                "op": ">",
                "threshold": 0.5,
                "min_samples": 3,
                "channels": ["hook"],
                "summary": "{value:.0%} thumbs down ({app})",
            }
        ],
    )
    async with running(Daemon(settings)):
        downs = [{"record_id": f"r{i}", "key": "thumbs", "score": 0} for i in range(3)]
        ups = [{"record_id": "r9", "key": "thumbs", "score": 1}]
        await publish([json.dumps(ups + downs).encode()], f"llm/feedback/{topic_root}")
        await asyncio.wait_for(receiver.received.wait(), 15)
    sent = json.loads(receiver.requests[0][1])
    text = json.dumps(sent)
    assert "users-unhappy" in text and "75%" in text and topic_root in text


async def test_the_client_and_the_langchain_callback_send_feedback_on_a_run(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    async with running(Daemon(feedback_settings(settings_for))) as d, http(d) as api:
        publisher = RecordPublisher(app=topic_root, flush_interval_s=0.05)
        handler = LookoutCallbackHandler(publisher)
        run_id = uuid.uuid4()
        model = GenericFakeChatModel(messages=iter([AIMessage(content="Monday.")]))
        await asyncio.to_thread(
            model.invoke, "when?", config={"callbacks": [handler], "run_id": run_id}
        )
        assert handler.feedback(run_id, "thumbs", 1, user_id="u1")
        publish_record(publisher, id="plain-1", prompt="p", response="r")
        assert publisher.feedback("plain-1", "resolved", 0, comment="no")
        await asyncio.to_thread(publisher.close)
        await eventually(lambda: sample_value(d, "lookout_feedback_accepted_total") == 2, d)
        await d.store.flush()
        got = (await api.get(f"/api/v1/records/{run_id}")).json()
        plain = (await api.get("/api/v1/records/plain-1")).json()
    assert got["response"] == "Monday."
    assert [(f["key"], f["score"], f["user_id"]) for f in got["feedback"]] == [
        ("thumbs", 1.0, "u1")
    ]
    assert [(f["key"], f["comment"]) for f in plain["feedback"]] == [("resolved", "no")]


async def judged(d: Daemon) -> list[str]:
    assert d.judge_store is not None
    return [v.record_id for v in await d.judge_store.verdicts_since(0.0)]


async def post(api: httpx.AsyncClient, path: str, body: Any) -> None:
    response = await api.post(path, content=json.dumps(body))
    assert response.status_code == 200, response.text


async def test_records_users_disliked_are_judged_first_and_agreement_follows_feedback(
    settings_for: Callable[..., Settings],
) -> None:
    settings = feedback_settings(
        settings_for,
        judge={
            "enabled": True,
            "model": "openai:judge-mini",
            "criteria": ["helpfulness"],
            "schedule": {"interval": "1h"},
            "sample_size": 2,
        },
    )

    def judge_model(_: Any) -> FakeListChatModel:
        return FakeListChatModel(responses=["Helpful enough.\nY"])  # every record passes

    daemon = Daemon(settings, judge_model_factory=judge_model)
    async with running(daemon) as d, http(d) as api:
        assert d.judge is not None
        records = [{"id": f"r{i}", "app": "bot", "prompt": "q", "response": "a"} for i in range(6)]
        await post(api, "/api/v1/records", records)
        downs = [
            {"record_id": rid, "app": "bot", "key": "thumbs", "score": 0} for rid in ("r4", "r5")
        ]
        await post(api, "/api/v1/feedback", downs)
        await d.judge.run_once()
        first = set(await judged(d))
        assert first == {"r4", "r5"}  # the disliked ones, before the four others

        def agreement() -> tuple[float | None, int] | None:
            for p in status_of(d)["judge"]["series"]:
                if p["metric"] == "judge_feedback_agreement" and p["app"] == "bot":
                    return p["value"], p["count"]
            return None

        assert agreement() == (0.0, 2)  # the judge passed both, users disliked both
        labels = {"app": "bot"}
        assert sample_value(d, "lookout_judge_feedback_agreement_ratio", labels) == 0.0
        up = {"record_id": "r0", "app": "bot", "key": "thumbs", "score": 1}
        await post(api, "/api/v1/feedback", up)
        await d.judge.run_once()
        await d.judge.run_once()
        value = agreement()
        assert value is not None and value[1] == 3  # r0 agrees; unrated records: not counted
        assert value[0] == pytest.approx(1 / 3)
        late = {"record_id": "r0", "app": "bot", "key": "resolved", "score": 0, "user_id": "u2"}
        await post(api, "/api/v1/feedback", late)  # after the verdict: counts as it comes
        assert agreement() == (0.0, 3)
