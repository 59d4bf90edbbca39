"""The app-side publisher: LangChain calls become records on a real broker."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from langchain_core.language_models.fake_chat_models import (
    FakeListChatModel,
    GenericFakeChatModel,
)
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from lookout.monitor.ingest.records import DecodeLimits, decode_payload
from lookout_client import LookoutCallbackHandler, RecordPublisher, publish_record
from tests.conftest import PrivateBroker, eventually


async def receive(sub: aiomqtt.Client, n: int) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    async with asyncio.timeout(15):
        async for message in sub.messages:
            body = json.loads(bytes(message.payload))  # type: ignore[arg-type,unused-ignore]
            records.extend(body if isinstance(body, list) else [body])
            if len(records) >= n:
                return records
    raise AssertionError("unreachable")


@pytest.fixture
def prefix() -> str:
    return f"llm/records-test/{uuid.uuid4().hex[:10]}"


async def test_langchain_calls_reach_a_real_subscriber(prefix: str) -> None:
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"sub-{uuid.uuid4().hex[:8]}") as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
        publisher = RecordPublisher(app="support-bot", topic_prefix=prefix, flush_interval_s=0.05)
        handler = LookoutCallbackHandler(publisher)
        reply = AIMessage(
            content="Your order ships Monday.",
            usage_metadata={"input_tokens": 12, "output_tokens": 6, "total_tokens": 18},
        )
        model = GenericFakeChatModel(messages=iter([reply]))
        messages = [SystemMessage("be brief"), HumanMessage("where is my order?")]
        await asyncio.to_thread(model.invoke, messages, config={"callbacks": [handler]})
        streamed = FakeListChatModel(responses=["hello there"])
        chunks = await asyncio.to_thread(
            lambda: list(streamed.stream("hi", config={"callbacks": [handler]}))
        )
        assert chunks
        failing = FakeListChatModel(responses=["x"], error_on_chunk_number=0)
        with pytest.raises(Exception):  # noqa: B017 - the fake raises a bare Exception
            await asyncio.to_thread(
                lambda: list(failing.stream("boom", config={"callbacks": [handler]}))
            )
        await asyncio.to_thread(publisher.close)
        records = await receive(sub, 3)

    first, second, third = records
    assert first["app"] == "support-bot"
    assert first["messages"][-1] == {"role": "user", "content": "where is my order?"}
    assert first["response"] == "Your order ships Monday."
    assert (first["input_tokens"], first["output_tokens"]) == (12, 6)
    assert first["latency_ms"] >= 0 and first["status"] == "ok"
    assert second["response"] == "hello there"
    assert 0 <= second["ttft_ms"] <= second["latency_ms"]
    assert third["status"] == "error" and third["error"]
    # What the handler sends is valid wire format for lookout.
    decoded = decode_payload(json.dumps(records).encode(), None, 0.0, DecodeLimits())
    assert decoded.rejections == [] and len(decoded.records) == 3
    assert decoded.records[0].prompt == "where is my order?"


async def test_publish_record_batches_and_never_blocks(prefix: str) -> None:
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"sub-{uuid.uuid4().hex[:8]}") as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
        publisher = RecordPublisher(
            app="batchy", topic_prefix=prefix, batch_size=50, flush_interval_s=5.0, max_queued=120
        )
        accepted = [publish_record(publisher, prompt=f"q{i}", latency_ms=i) for i in range(150)]
        await asyncio.to_thread(publisher.close)
        records = await receive(sub, sum(accepted))
    assert sum(accepted) + publisher.dropped == 150
    assert len(records) == sum(accepted)
    assert publisher.published == sum(accepted)
    assert {r["app"] for r in records} == {"batchy"}


async def test_records_published_while_the_broker_is_down_are_delivered_by_close(
    tmp_path: Path, prefix: str
) -> None:
    """An app that starts (and publishes) before the broker is up: close() waits until the
    broker has every record, not only until the socket's buffer is empty."""
    broker = PrivateBroker(tmp_path)
    subscriber = f"sub-{uuid.uuid4().hex[:8]}"

    def client() -> aiomqtt.Client:
        return aiomqtt.Client("127.0.0.1", broker.port, identifier=subscriber, clean_session=False)

    broker.start()  # once, for the subscriber's persistent session
    async with client() as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
    broker.stop()
    publisher = RecordPublisher(
        url=broker.url, app="early", topic_prefix=prefix, batch_size=10, flush_interval_s=0.05
    )
    assert all(publish_record(publisher, prompt=f"q{i}") for i in range(25))
    try:
        await eventually(lambda: publisher.published == 25)  # handed to paho, not connected
        broker.start()
        await asyncio.to_thread(publisher.close, 15.0)
        async with client() as sub:
            records = await receive(sub, 25)
    finally:
        broker.stop()
    assert sorted(r["prompt"] for r in records) == sorted(f"q{i}" for i in range(25))


async def test_a_script_that_exits_without_closing_still_delivers_its_last_records(
    prefix: str, tmp_path: Path
) -> None:
    import sys

    script = tmp_path / "short.py"
    script.write_text(
        "import sys\n"
        "from lookout_client import RecordPublisher, publish_record\n"
        "pub = RecordPublisher(app='short', topic_prefix=sys.argv[1], flush_interval_s=30)\n"
        "for i in range(7):\n"
        "    publish_record(pub, prompt=f'q{i}', latency_ms=i)\n"
        # no close(): the batch is still queued, and the interpreter exits now
    )
    async with aiomqtt.Client("127.0.0.1", 1883, identifier=f"sub-{uuid.uuid4().hex[:8]}") as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
        proc = await asyncio.create_subprocess_exec(sys.executable, str(script), prefix)
        assert await asyncio.wait_for(proc.wait(), 20) == 0
        records = await receive(sub, 7)
    assert sorted(r["prompt"] for r in records) == [f"q{i}" for i in range(7)]
