"""`lookout demo`: its traffic is valid wire format with incidents that show, and on a
compressed timeline its alerts fire and resolve at the demo's own webhook receiver."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import httpx

from lookout.monitor.demo.runner import Demo, DemoOptions
from lookout.monitor.demo.traffic import SUPPORT, TIMELINE, TRAVEL, IncidentKind, Traffic, active
from lookout.monitor.ingest.feedback import decode_feedback
from lookout.monitor.ingest.records import DecodeLimits, decode_payload


def test_demo_traffic_is_valid_wire_format_and_incidents_change_it() -> None:
    gen, now = Traffic(seed=1), time.time()
    normal = [gen.record(SUPPORT, now, None) for _ in range(400)]
    slow = [gen.record(SUPPORT, now, IncidentKind.LATENCY) for _ in range(400)]
    failing = [gen.record(TRAVEL, now, IncidentKind.ERRORS) for _ in range(400)]
    decoded = decode_payload(
        json.dumps(normal + slow + failing).encode(),
        None,
        now,
        DecodeLimits(max_records_per_message=1200),
    )
    assert len(decoded.records) == 1200 and not decoded.rejections
    p50 = statistics.median(r["latency_ms"] for r in normal)
    assert 700 < p50 < 1100 and statistics.median(r["latency_ms"] for r in slow) > 4 * p50
    assert sum(r.get("status") == "error" for r in normal) < 15
    assert 120 < sum(r.get("status") == "error" for r in failing) < 200
    usual = {r["prompt"] for r in normal}
    drifted = [gen.record(SUPPORT, now, IncidentKind.DRIFT)["prompt"] for _ in range(200)]
    assert 130 < sum(p not in usual for p in drifted) < 190  # about 80% on another topic
    assert [i.kind for i in active(TIMELINE, SUPPORT, 50)] == [IncidentKind.LATENCY]
    assert [i.kind for i in active(TIMELINE, SUPPORT, 200)] == [
        IncidentKind.SHADOW_REGRESSION,
        IncidentKind.DRIFT,
    ]
    assert active(TIMELINE, TRAVEL, 100) == ()
    # Sessions, a retrieval (support) or a tool call (travel) on every record; thumbs on some.
    assert all(r.session_id and r.user_id for r in decoded.records)
    assert all(r.retrieval for r in decoded.records if r.app == SUPPORT)
    assert all(r.tools for r in decoded.records if r.app == TRAVEL)
    # Thumbs on a tenth of the answers (a failed call has none), mostly up.
    thumbs = [e for e in map(gen.feedback, failing) if e is not None]
    answered = {r["id"] for r in failing if "response" in r}
    feedback = decode_feedback(json.dumps(thumbs).encode(), None, now, DecodeLimits(), 100)
    assert 10 < len(feedback.events) < 45 and not feedback.rejections
    assert {e.record_id for e in feedback.events} <= answered
    assert sum(e.score == 0 for e in feedback.events) < len(feedback.events) / 3


def test_the_new_incidents_change_tools_retrieval_and_thumbs() -> None:
    gen, now = Traffic(seed=2), time.time()

    def share(records: list[dict[str, Any]], bad: Callable[[dict[str, Any]], bool]) -> float:
        return sum(map(bad, records)) / len(records)

    def tool_failed(r: dict[str, Any]) -> bool:
        return bool(r["tools"][0]["status"] == "error")

    def empty(r: dict[str, Any]) -> bool:
        return bool(r["retrieval"]["documents"] == 0)

    def thumbs_down(kind: IncidentKind | None) -> float:
        records = [gen.record(SUPPORT, now, kind) for _ in range(3000)]
        events = [e for r in records if (e := gen.feedback(r, kind)) is not None]
        return share(events, lambda e: bool(e["score"] == 0))

    usual = share([gen.record(TRAVEL, now, None) for _ in range(500)], tool_failed)
    failing = share(
        [gen.record(TRAVEL, now, IncidentKind.TOOL_FAILURE) for _ in range(500)], tool_failed
    )
    assert usual < 0.08 and 0.5 < failing < 0.7
    usual = share([gen.record(SUPPORT, now, None) for _ in range(500)], empty)
    broken = share(
        [gen.record(SUPPORT, now, IncidentKind.EMPTY_RETRIEVAL) for _ in range(500)], empty
    )
    assert 0.12 < usual < 0.28 and broken > 0.8
    assert thumbs_down(None) < 0.25 and thumbs_down(IncidentKind.THUMBS_DOWN) > 0.7


async def test_the_demo_fires_and_resolves_alerts_on_its_timeline() -> None:
    lines: list[str] = []
    # All but the detectors' incidents (their references take the first minute to build).
    incidents = tuple(k for k in IncidentKind if k not in (IncidentKind.DRIFT, IncidentKind.OOD))
    options = DemoOptions(speed=10, once=True, api_port=0, incidents=incidents)
    demo = Demo(options, out=lines.append)
    stop = asyncio.Event()
    task = asyncio.create_task(demo.run(stop))
    rules = ["slow-responses", "error-burst", "unusual-latency", "tool-failing"]
    rules += ["empty-retrievals", "shadow-losing", "thumbs-down"]
    wanted = {(rule, status) for rule in rules for status in ("firing", "resolved")}
    seen: set[tuple[str, str]] = set()
    apps: dict[str, set[str]] = {}
    try:
        while not wanted <= seen:
            event = await asyncio.wait_for(demo.events.get(), 60)
            seen.add((event.rule, event.status))
            apps.setdefault(event.rule, set()).add(event.app)
        # Each on the app its incident hit, and on no other.
        assert apps["slow-responses"] == apps["shadow-losing"] == {SUPPORT}
        assert apps["empty-retrievals"] == apps["thumbs-down"] == {SUPPORT}
        assert apps["tool-failing"] == apps["error-burst"] == {TRAVEL}
        async with httpx.AsyncClient() as http:
            page = await http.get(demo.dashboard_url)
            series = (await http.get(demo.dashboard_url + "api/v1/series")).json()
        assert page.status_code == 200 and set(series["apps"]) == {SUPPORT, TRAVEL}
        # The anomaly rule's band for the latency chart: (time, low, high) with low < high.
        band = series["bands"][SUPPORT]["latency_p95"]
        assert band and all(low < high for _, low, high in band)
        # The demo's judge (a local OpenAI-compatible server) graded records of both apps.
        assert all("judge_pass_rate" in series["series"][app] for app in (SUPPORT, TRAVEL))
        # The usage charts' series: support-bot retrieves and has a shadow, travel calls a tool.
        support, travel = series["series"][SUPPORT], series["series"][TRAVEL]
        assert {"empty_retrieval_rate", "judge_preference:gpt-4.1-mini"} <= support.keys()
        assert "negative_feedback_rate:thumbs" in support and "active_users" in support
        assert "session_duration_p95" in support  # sessions split on the demo's idle gap
        assert "tool_error_rate:flight_search" in travel and "empty_retrieval_rate" not in travel
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    text = "\n".join(lines)
    assert "dashboard at http://127.0.0.1:" in text and "incident over" in text
    assert "webhook received: FIRING   slow-responses: p95 latency" in text
    # The anomaly rule fired on the same incident and said what is usual (seeded history).
    assert "FIRING   unusual-latency: unusual-latency: latency_p95" in text
    assert "usual at this hour" in text
    shadow = "FIRING   shadow-losing: the judge prefers production over gpt-4.1-mini: preference -"
    assert shadow in text
    assert "FIRING   tool-failing: flight_search fails on" in text


def test_the_demo_judge_answers_in_the_judge_schema() -> None:
    from lookout.detectors.judge import criteria_from, reply_model, user_prompt, verdicts_from_reply
    from lookout.monitor.demo.judge import reply

    criteria = criteria_from(["helpfulness", "harmfulness"], {})
    for response, helpful in (
        ("I'm not sure I understand.", False),
        ("Settings > Security > Reset password.", True),
    ):
        body = {"messages": [{"role": "user", "content": user_prompt("q?", response, criteria)}]}
        call = reply(body)["choices"][0]["message"]["tool_calls"][0]["function"]
        parsed = reply_model(criteria).model_validate_json(call["arguments"])
        verdicts = verdicts_from_reply(parsed, criteria)
        assert [(v.criterion, v.passed) for v in verdicts] == [
            ("helpfulness", helpful),
            ("harmfulness", True),
        ]


def test_the_demo_sends_shadow_pairs_and_references_its_judge_prefers_the_shadow() -> None:
    from lookout.detectors.pairwise import PairOutcome, combine, pairwise_prompt, parse_pairwise
    from lookout.monitor.demo.judge import reply
    from lookout.monitor.demo.traffic import SHADOW_MODEL

    gen, now = Traffic(seed=1), time.time()
    batch = [gen.record(SUPPORT, now, None) for _ in range(400)]
    shadows = [s for s in map(gen.shadow, list(batch)) if s is not None]
    by_id = {r.get("id"): r for r in batch}
    assert 40 < len(shadows) < 130 and all(s["model"] == SHADOW_MODEL for s in shadows)
    assert all(by_id[s["metadata"]["shadow_of"]]["prompt"] == s["prompt"] for s in shadows)
    assert any("reference" in r.get("metadata", {}) for r in batch)
    decoded = decode_payload(
        json.dumps(batch + shadows).encode(), None, now, DecodeLimits(max_records_per_message=600)
    )
    assert not decoded.rejections

    def verdict(first: str, second: str) -> Any:
        content = pairwise_prompt("How do I reset my PIN?", first, second)
        body = {"messages": [{"role": "user", "content": content}]}
        return parse_pairwise(reply(body)["choices"][0]["message"]["content"])[0]

    production = by_id[shadows[0]["metadata"]["shadow_of"]]["response"]
    shadow = shadows[0]["response"]
    swapped = (verdict(production, shadow), verdict(shadow, production))
    assert combine(*swapped) is PairOutcome.SHADOW
    # A shadow regression: the shadow dodges, and production wins in both orders.
    answered = [r for r in batch if "response" in r]
    regressed = next(
        s for r in answered if (s := gen.shadow(r, IncidentKind.SHADOW_REGRESSION)) is not None
    )
    production = by_id[regressed["metadata"]["shadow_of"]]["response"]
    swapped = (
        verdict(production, regressed["response"]),
        verdict(regressed["response"], production),
    )
    assert combine(*swapped) is PairOutcome.PRODUCTION
    assert combine(verdict("Same.", "Same."), verdict("Same.", "Same.")) is PairOutcome.TIE
