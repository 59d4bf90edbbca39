"""Tool and retrieval use: the wire fields, the series on a known stream, and a LangChain agent
run (a fake chat model, a real tool, a real in-memory retriever) through the client, a real
broker and the daemon."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any, NamedTuple

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.runnables import RunnableConfig, RunnableLambda
from langchain_core.tools import tool
from langchain_core.vectorstores import InMemoryVectorStore

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.ingest.records import DecodeLimits, decode_payload
from lookout.monitor.ingest.tool_use import Retrieval, ToolCall
from lookout.monitor.metrics.tools import ToolWindows
from lookout_client import LookoutCallbackHandler, RecordPublisher
from tests.conftest import eventually, running, sample_value, status_of

T0 = 1_800_000_000.0


def test_wire_fields_decode_and_bad_ones_are_rejected_with_a_reason() -> None:
    body = {
        "tools": [{"name": "search", "latency_ms": 120, "status": "error"}, {"name": "calc"}],
        "retrieval": {"latency_ms": 35, "documents": 0},
    }
    decoded = decode_payload(json.dumps(body).encode(), None, T0, DecodeLimits())
    record = decoded.records[0]
    assert record.tools == [ToolCall("search", 120.0, "error"), ToolCall("calc", None, "ok")]
    assert record.retrieval == Retrieval(35.0, 0, "ok")
    bad = [
        {"tools": [{"latency_ms": 3}]},
        {"tools": [{"name": "x", "status": "broken"}]},
        {"tools": [{"name": "x"}] * 257},
        {"retrieval": {"documents": -1}},
    ]
    payload = json.dumps(bad).encode()
    reasons = [r.reason.value for r in decode_payload(payload, None, T0, DecodeLimits()).rejections]
    assert reasons == ["wrong_type", "invalid_value", "too_large", "negative_value"]


def test_series_equal_hand_computed_values_and_tool_names_are_capped() -> None:
    requests = {"bot": 10}
    windows = ToolWindows(lambda w, now: requests, bucket_s=10, max_window_s=600, max_tools=2)
    calls = [ToolCall("search", 100), ToolCall("search", 300, "error")]
    calls += [ToolCall("search", 200), ToolCall("search", 400)]
    for call in calls:
        windows.observe("bot", [call], None, T0)
    windows.observe("bot", [ToolCall("calc", 10), ToolCall(f"made-up-{T0}", 5)], None, T0)
    for documents in (3, 0, 0, None):
        windows.observe("bot", None, Retrieval(50.0, documents), T0 + 1)
    got = {(p.metric, dict(p.labels).get("tool")): p.value for p in windows.points(300, T0 + 5)}
    assert got[("tool_calls_per_request", "search")] == 4 / 10
    assert got[("tool_error_rate", "search")] == 1 / 4
    assert 0.3 <= got[("tool_latency_p95", "search")] <= 0.4  # type: ignore[operator]
    assert got[("tool_calls_per_request", "other")] == 1 / 10 and windows.folded == 1
    assert got[("retrieval_rate", None)] == 4 / 10
    assert got[("empty_retrieval_rate", None)] == 2 / 3  # of those that said how many
    assert got[("retrieval_latency_p95", None)] == pytest.approx(0.05)


@tool
def order_status(order_id: str) -> str:
    """Look up an order's shipping status."""
    return f"order {order_id} shipped on Monday"


def agent_run(handler: LookoutCallbackHandler) -> str:
    """A small agent: retrieve, let the model ask for a tool, call it, let the model answer."""
    store = InMemoryVectorStore(DeterministicFakeEmbedding(size=16))
    store.add_documents([Document("Orders ship within two days."), Document("Returns: 30 days.")])
    retriever = store.as_retriever(search_kwargs={"k": 2})
    ask = AIMessage(
        "", tool_calls=[{"name": "order_status", "args": {"order_id": "42"}, "id": "c1"}]
    )
    model = GenericFakeChatModel(messages=iter([ask, AIMessage("It shipped on Monday.")]))

    def agent(question: str, config: RunnableConfig) -> str:
        docs = retriever.invoke(question, config)
        messages: list[Any] = [
            HumanMessage(f"{question}\n\n" + "\n".join(d.page_content for d in docs))
        ]
        first = model.invoke(messages, config)
        call = first.tool_calls[0]
        result = order_status.invoke(call["args"], config)
        messages += [first, ToolMessage(result, tool_call_id=call["id"])]
        return str(model.invoke(messages, config).content)

    return RunnableLambda(agent).invoke("where is order 42?", {"callbacks": [handler]})


async def test_a_langchain_agent_run_fills_tools_and_retrieval_into_the_series(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    async with running(Daemon(settings_for(detectors={"enabled": False}))) as d:
        publisher = RecordPublisher(app=topic_root, flush_interval_s=0.05)
        handler = LookoutCallbackHandler(publisher)
        answer = await asyncio.to_thread(agent_run, handler)
        await asyncio.to_thread(publisher.close)
        await eventually(
            lambda: sample_value(d, "lookout_messages_received_total", {"source": "mqtt"}) >= 1, d
        )
        await eventually(lambda: len(status_of(d)["tools"]) >= 6, d)
        series = {(p["metric"], p.get("tool")): p for p in status_of(d)["tools"]}
    assert answer == "It shipped on Monday."
    # Two LLM calls: the first carried the retrieval, the second the tool call it asked for.
    assert series[("retrieval_rate", None)]["value"] == 1 / 2
    assert series[("empty_retrieval_rate", None)]["value"] == 0.0
    assert series[("tool_calls_per_request", "order_status")]["value"] == 1 / 2
    assert series[("tool_error_rate", "order_status")]["value"] == 0.0
    assert series[("tool_latency_p95", "order_status")]["value"] >= 0.0
    assert series[("retrieval_latency_p95", None)]["app"] == topic_root


def test_a_message_of_records_at_once_counts_as_the_records_one_by_one() -> None:
    """The ingest path hands a message's records over together; every series (tool labels past
    the cap, latencies past a digest batch, a tool named like the retrieval cell) is the same
    as one record at a time."""
    rng = random.Random(7)
    names = [f"tool-{i}" for i in range(8)] + ["retrieval"]
    one, many = (ToolWindows(lambda w, now: {"bot": 500}, max_tools=4) for _ in range(2))
    for message in range(300):
        at = T0 + message * rng.choice([0.0, 0.4, 7.0])
        records = [
            Use(
                [
                    ToolCall(rng.choice(names[: 8 + message % 2]), rng.choice([None, 30.0, 90.0]))
                    for _ in range(rng.randint(0, 3))
                ]
                or None,
                Retrieval(rng.choice([None, 12.0]), rng.choice([None, 0, 3]))
                if rng.random() < 0.7
                else None,
            )
            for _ in range(rng.randint(1, 60))
        ]
        for r in records:
            one.observe("bot", r.tools, r.retrieval, at)
        many.observe_many("bot", records, at)
    now = T0 + 300 * 7.0
    assert many.points(3600, now) == one.points(3600, now) and many.folded == one.folded > 0


class Use(NamedTuple):
    tools: list[ToolCall] | None
    retrieval: Retrieval | None
