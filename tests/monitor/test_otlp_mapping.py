"""The OTLP mapping, one attribute at a time, for each dialect (docs/opentelemetry.md's table)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lookout.monitor.ingest.otlp_correlation import LogBuffer
from lookout.monitor.ingest.otlp_decode import OtlpLog, OtlpSpan, SpanEvent
from lookout.monitor.ingest.otlp_mapping import MappingOptions, is_llm_call, map_span

START = 1_732_800_000_000_000_000
OPTIONS = MappingOptions()


def span(attrs: dict[str, Any], **kw: Any) -> OtlpSpan:
    fields: dict[str, Any] = {
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "span_id": "b7ad6b7169203331",
        "name": "chat",
        "start_ns": START,
        "end_ns": START + 420_000_000,
        "attributes": attrs,
        "resource": {"service.name": "support-bot"},
    }
    fields.update(kw)
    return OtlpSpan(**fields)


def mapped(attrs: dict[str, Any], logs: list[OtlpLog] | None = None, **kw: Any) -> dict[str, Any]:
    return map_span(span(attrs, **kw), logs or [], OPTIONS)


def semconv(**extra: Any) -> dict[str, Any]:
    return {"gen_ai.operation.name": "chat", **extra}


# (dialect, attributes, wire field, value)
FIELD_CASES = [
    ("semconv", semconv(**{"gen_ai.request.model": "gpt-4o"}), "model", "gpt-4o"),
    ("semconv", semconv(**{"gen_ai.response.model": "gpt-4o-2024"}), "model", "gpt-4o-2024"),
    ("semconv", semconv(**{"gen_ai.provider.name": "openai"}), "provider", "openai"),
    ("semconv-deprecated", semconv(**{"gen_ai.system": "OpenAI"}), "provider", "openai"),
    ("semconv", semconv(**{"gen_ai.usage.input_tokens": 12}), "input_tokens", 12),
    ("semconv", semconv(**{"gen_ai.usage.output_tokens": 5}), "output_tokens", 5),
    ("semconv-deprecated", semconv(**{"gen_ai.usage.prompt_tokens": 7}), "input_tokens", 7),
    ("semconv-deprecated", semconv(**{"gen_ai.usage.completion_tokens": 3}), "output_tokens", 3),
    ("semconv", semconv(**{"gen_ai.response.time_to_first_chunk": 0.25}), "ttft_ms", 250.0),
    ("semconv", semconv(**{"gen_ai.conversation.id": "c-9"}), "session_id", "c-9"),
    ("semconv", semconv(**{"user.id": "u-1"}), "user_id", "u-1"),
    ("openllmetry", {"llm.request.type": "chat", "gen_ai.system": "openai"}, "provider", "openai"),
    ("openllmetry", {"llm.request.type": "chat", "llm.usage.prompt_tokens": 9}, "input_tokens", 9),
    (
        "openllmetry",
        {"llm.request.type": "chat", "traceloop.association.properties.user_id": "u-2"},
        "user_id",
        "u-2",
    ),
    ("openinference", {"openinference.span.kind": "LLM", "llm.model_name": "m"}, "model", "m"),
    (
        "openinference",
        {"openinference.span.kind": "LLM", "llm.provider": "anthropic"},
        "provider",
        "anthropic",
    ),
    (
        "openinference",
        {"openinference.span.kind": "LLM", "llm.token_count.prompt": 4},
        "input_tokens",
        4,
    ),
    (
        "openinference",
        {"openinference.span.kind": "LLM", "llm.token_count.completion": 2},
        "output_tokens",
        2,
    ),
    ("openinference", {"openinference.span.kind": "LLM", "session.id": "s-3"}, "session_id", "s-3"),
    (
        "openinference",
        {
            "openinference.span.kind": "LLM",
            "llm.model_name": "gpt-4o-mini-2024-07-18",
            "llm.invocation_parameters": '{"model": "gpt-4o-mini"}',
        },
        "model",
        "gpt-4o-mini",
    ),
]


@pytest.mark.parametrize(("dialect", "attrs", "field", "value"), FIELD_CASES)
def test_each_attribute_lands_in_its_field(
    dialect: str, attrs: dict[str, Any], field: str, value: Any
) -> None:
    assert is_llm_call(attrs), dialect
    assert mapped(attrs)[field] == value


@pytest.mark.parametrize(
    ("attrs", "llm"),
    [
        (semconv(), True),
        ({"gen_ai.operation.name": "embeddings"}, False),
        ({"gen_ai.operation.name": "execute_tool"}, False),
        ({"gen_ai.operation.name": "invoke_agent"}, False),
        ({"gen_ai.system": "openai", "gen_ai.request.model": "m"}, True),  # before operation.name
        ({"llm.request.type": "completion"}, True),
        ({"llm.request.type": "embedding"}, False),
        ({"openinference.span.kind": "LLM"}, True),
        ({"openinference.span.kind": "CHAIN"}, False),
        ({"http.method": "GET"}, False),
    ],
)
def test_only_llm_calls_are_records(attrs: dict[str, Any], llm: bool) -> None:
    assert is_llm_call(attrs) is llm


def test_span_times_ids_and_app() -> None:
    record = mapped(semconv())
    assert record["id"] == "0af7651916cd43dd8448eb211c80319c:b7ad6b7169203331"
    assert record["ts"] == START / 1e9
    assert record["latency_ms"] == pytest.approx(420.0)
    assert record["app"] == "support-bot"
    assert "app" not in mapped(semconv(), resource={"service.name": "unknown_service:python"})
    custom = MappingOptions(app_attribute="deployment.name")
    resource = {"service.name": "x", "deployment.name": "billing"}
    assert map_span(span(semconv(), resource=resource), [], custom)["app"] == "billing"


def test_error_status_and_type() -> None:
    record = mapped(
        semconv(**{"error.type": "<class 'openai.RateLimitError'>"}),
        status_code=2,
        status_message="Error code: 429\nTraceback ...",
    )
    assert record["status"] == "error"
    assert record["error"] == "openai.RateLimitError: Error code: 429"
    event = SpanEvent("exception", START, {"exception.type": "TimeoutError"})
    assert mapped(semconv(), status_code=2, events=(event,))["error"] == "TimeoutError"
    assert "status" not in mapped(semconv(), status_code=1)


def parts(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": text}]}


def test_semconv_messages_attributes() -> None:
    record = mapped(
        semconv(
            **{
                "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be kind"}]),
                "gen_ai.input.messages": json.dumps([parts("user", "hi"), parts("user", "where?")]),
                "gen_ai.output.messages": json.dumps([parts("assistant", "here")]),
            }
        )
    )
    assert record["messages"][0] == {"role": "system", "content": "Be kind"}
    assert record["messages"][-1] == {"role": "user", "content": "where?"}
    assert record["response"] == "here"


def test_deprecated_span_events() -> None:
    events = (
        SpanEvent(
            "gen_ai.content.prompt", START, {"gen_ai.prompt": '[{"role": "user", "content": "q"}]'}
        ),
        SpanEvent(
            "gen_ai.content.completion",
            START,
            {"gen_ai.completion": '[{"role": "assistant", "content": "a"}]'},
        ),
    )
    record = mapped(semconv(), events=events)
    assert record["messages"] == [{"role": "user", "content": "q"}]
    assert record["response"] == "a"


def log(name: str, body: Any = None, attrs: dict[str, Any] | None = None) -> OtlpLog:
    return OtlpLog(
        "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", START, name, body, attrs or {}
    )


def test_deprecated_log_events() -> None:
    logs = [
        log("gen_ai.system.message", {"content": "Be kind"}),
        log("gen_ai.user.message", {"content": "where?"}),
        log("gen_ai.choice", {"index": 0, "message": {"role": "assistant", "content": "here"}}),
    ]
    record = mapped(semconv(), logs)
    assert record["messages"] == [
        {"role": "system", "content": "Be kind"},
        {"role": "user", "content": "where?"},
    ]
    assert record["response"] == "here"


def test_operation_details_log_with_structured_messages() -> None:
    details = log(
        "gen_ai.client.inference.operation.details",
        attrs={
            "gen_ai.input.messages": [parts("user", "where?")],
            "gen_ai.output.messages": [parts("assistant", "here")],
        },
    )
    record = mapped(semconv(), [details])
    assert record["messages"] == [{"role": "user", "content": "where?"}]
    assert record["response"] == "here"


def test_openllmetry_indexed_prompts_and_completions() -> None:
    attrs = {
        "llm.request.type": "chat",
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "Be kind",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": "where?",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "here",
        "llm.usage.total_tokens": 17,
    }
    record = mapped(attrs)
    assert record["messages"][-1] == {"role": "user", "content": "where?"}
    assert record["response"] == "here"
    assert record["metadata"]["llm.usage.total_tokens"] == 17


def test_openinference_messages_and_plain_values() -> None:
    attrs = {
        "openinference.span.kind": "LLM",
        "llm.input_messages.0.message.role": "user",
        "llm.input_messages.0.message.content": "where?",
        "llm.output_messages.0.message.role": "assistant",
        "llm.output_messages.0.message.content": "here",
    }
    record = mapped(attrs)
    assert (record["messages"], record["response"]) == (
        [{"role": "user", "content": "where?"}],
        "here",
    )
    plain = {"openinference.span.kind": "LLM", "input.value": "q", "output.value": "a"}
    assert (mapped(plain)["messages"][0]["content"], mapped(plain)["response"]) == ("q", "a")
    as_json = {
        **plain,
        "input.mime_type": "application/json",
        "output.mime_type": "application/json",
    }
    assert "messages" not in mapped(as_json) and "response" not in mapped(as_json)


def test_first_token_event_gives_ttft() -> None:
    events = (
        SpanEvent("First Token Stream Event", START + 80_000_000, {}),
        SpanEvent("gen_ai.content.completion.chunk", START + 120_000_000, {}),
    )
    assert mapped(semconv(), events=events)["ttft_ms"] == pytest.approx(80.0)


def test_long_texts_are_cut_and_say_so() -> None:
    options = MappingOptions(max_text_chars=10)
    attrs = semconv(**{"gen_ai.output.messages": json.dumps([parts("assistant", "x" * 50)])})
    record = map_span(span(attrs), [], options)
    assert record["response"] == "x" * 10
    assert record["metadata"]["otel.truncated"] == ["response"]


def test_log_buffer_bounded_and_expiring() -> None:
    buffer = LogBuffer(max_records=2, ttl_s=30)
    first = OtlpLog("aa", "01", 0, "gen_ai.choice", None)
    second = OtlpLog("aa", "02", 0, "gen_ai.choice", None)
    third = OtlpLog("aa", "03", 0, "gen_ai.choice", None)
    for i, record in enumerate((first, second, third)):
        assert buffer.add(record, "app", now=float(i))
    assert buffer.dropped == 1 and not buffer.has(("aa", "01"))  # the oldest made room
    assert buffer.sends_logs("app", now=10) and not buffer.sends_logs("other", now=10)
    assert buffer.take(("aa", "02")) == [second]
    assert buffer.expire(now=100) == 1 and len(buffer) == 0
    assert not buffer.add(OtlpLog("", "", 0, "gen_ai.choice", None), "app", now=100)
