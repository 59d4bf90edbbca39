"""OpenTelemetry GenAI spans as lookout records: a pure, table-driven mapping.

One LLM call span (plus its events and the log records correlated with it) becomes one record
in the wire format (docs/wire-format.md), which then takes the same decoder and pipeline as
MQTT and HTTP records. Three dialects are read: upstream's GenAI semantic conventions (current
and deprecated names), OpenLLMetry (Traceloop) and OpenInference (Arize). The tables below say
which attribute feeds which field, first present wins; docs/opentelemetry.md shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from lookout.monitor.ingest.otlp_content import events_of, prompt_turns, response_text
from lookout.monitor.ingest.otlp_decode import STATUS_ERROR, OtlpLog, OtlpSpan

# Operations that are one call to a model; agents, tools and embeddings are not (their spans
# wrap or sit beside the calls, which would otherwise count twice or skew latency).
LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
OPENINFERENCE_LLM_KINDS = frozenset({"LLM"})
OPENLLMETRY_LLM_TYPES = frozenset({"chat", "completion"})

STRING_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "model",
        (
            "gen_ai.request.model",
            "llm.request.model",
            "llm.model_name",
            "gen_ai.response.model",
            "llm.response.model",
        ),
    ),
    ("provider", ("gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")),
    (
        "session_id",
        ("session.id", "gen_ai.conversation.id", "traceloop.association.properties.session_id"),
    ),
    ("user_id", ("user.id", "enduser.id", "traceloop.association.properties.user_id")),
)
TOKEN_FIELDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "input_tokens",
        (
            "gen_ai.usage.input_tokens",
            "gen_ai.usage.prompt_tokens",
            "llm.token_count.prompt",
            "llm.usage.prompt_tokens",
        ),
    ),
    (
        "output_tokens",
        (
            "gen_ai.usage.output_tokens",
            "gen_ai.usage.completion_tokens",
            "llm.token_count.completion",
            "llm.usage.completion_tokens",
        ),
    ),
)
# Time to first token, in seconds, as an attribute...
TTFT_ATTRIBUTES_S = ("gen_ai.response.time_to_first_chunk", "gen_ai.server.time_to_first_token")
# ... or as the time of the first of these span events.
FIRST_TOKEN_EVENTS = frozenset(
    {"First Token Stream Event", "gen_ai.content.completion.chunk", "llm.content.completion.chunk"}
)
# Attributes kept in the record's metadata (under their own names) when present.
METADATA_ATTRIBUTES = (
    "gen_ai.response.id",
    "gen_ai.response.finish_reasons",
    "llm.finish_reason",
    "gen_ai.request.temperature",
    "gen_ai.request.max_tokens",
    "gen_ai.request.top_p",
    "gen_ai.usage.total_tokens",
    "llm.usage.total_tokens",
    "llm.token_count.total",
    "llm.request.type",
    "server.address",
)
_MAX_SHORT = 256
_MAX_METADATA_VALUE = 256
_MAX_ERROR_CHARS = 1_000


@dataclass(frozen=True, slots=True)
class MappingOptions:
    app_attribute: str = "service.name"  # the resource attribute that names the app
    max_text_chars: int = 200_000  # longer prompts and responses are cut (and say so)
    max_metadata_bytes: int = 16_384


def is_llm_call(attrs: dict[str, Any]) -> bool:
    """Whether a span is one call to a model, in any of the three dialects."""
    operation = attrs.get("gen_ai.operation.name")
    if operation is not None:
        return operation in LLM_OPERATIONS
    kind = attrs.get("openinference.span.kind")
    if kind is not None:
        return kind in OPENINFERENCE_LLM_KINDS
    request_type = attrs.get("llm.request.type")
    if request_type is not None:
        return request_type in OPENLLMETRY_LLM_TYPES
    # Older GenAI conventions had no operation name: a system and a model make a call.
    return ("gen_ai.system" in attrs or "gen_ai.provider.name" in attrs) and (
        "gen_ai.request.model" in attrs
    )


def has_content(span: OtlpSpan) -> bool:
    """Whether the span carries its own prompt or response (else they may come as logs)."""
    events = events_of(span, ())
    return bool(prompt_turns(span, events)) or response_text(span, events) is not None


def app_of(resource: dict[str, Any], options: MappingOptions) -> str | None:
    app = resource.get(options.app_attribute)
    # The SDK's stand-in when a service sets no name says nothing about the app.
    if not isinstance(app, str) or not app or app.startswith("unknown_service"):
        return None
    return app[:_MAX_SHORT]


def _first(attrs: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def _error_of(span: OtlpSpan) -> str | None:
    if span.status_code != STATUS_ERROR:
        return None
    kind = span.attributes.get("error.type")
    if kind is None:
        kind = next(
            (e.attributes.get("exception.type") for e in span.events if e.name == "exception"),
            None,
        )
    kind = str(kind).removeprefix("<class '").removesuffix("'>") if kind is not None else None
    # The first line: some instrumentations append a whole traceback.
    message = span.status_message.split("\n", 1)[0][:_MAX_ERROR_CHARS]
    if kind and message:
        return f"{kind}: {message}"
    return kind or message or "error"


def _ttft_ms(span: OtlpSpan) -> float | None:
    seconds = _first(span.attributes, TTFT_ATTRIBUTES_S)
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return float(seconds) * 1000.0
    if not span.events:
        return None
    times = [e.time_ns for e in span.events if e.name in FIRST_TOKEN_EVENTS]
    if times and span.start_ns and min(times) >= span.start_ns:
        return (min(times) - span.start_ns) / 1e6
    return None


def _invocation_model(attrs: dict[str, Any]) -> str | None:
    params = attrs.get("llm.invocation_parameters")
    if not isinstance(params, str) or "gen_ai.request.model" in attrs:
        return None
    try:
        model = msgspec.json.decode(params).get("model")
    except (msgspec.DecodeError, AttributeError, RecursionError):
        return None
    return model if isinstance(model, str) and model else None


def _cut(text: str | None, limit: int, cut: list[str], name: str) -> str | None:
    if text is None or len(text) <= limit:
        return text
    cut.append(name)
    return text[:limit]


def _metadata(span: OtlpSpan, cut: list[str], options: MappingOptions) -> dict[str, Any] | None:
    metadata: dict[str, Any] = {
        "otel.trace_id": span.trace_id,
        "otel.span_id": span.span_id,
        "otel.span_name": span.name[:_MAX_METADATA_VALUE],
    }
    if span.scope:
        metadata["otel.scope"] = span.scope[:_MAX_METADATA_VALUE]
    attrs = span.attributes
    for key in METADATA_ATTRIBUTES:
        value = attrs.get(key)
        if value is None:
            continue
        if isinstance(value, str):
            value = value[:_MAX_METADATA_VALUE]
        elif isinstance(value, list):
            value = [v[:_MAX_METADATA_VALUE] if isinstance(v, str) else v for v in value[:16]]
        metadata[key] = value
    if cut:
        metadata["otel.truncated"] = cut
    if len(msgspec.json.encode(metadata)) > options.max_metadata_bytes:
        return None
    return metadata


def map_span(span: OtlpSpan, logs: Sequence[OtlpLog], options: MappingOptions) -> dict[str, Any]:
    """The wire-format record of one LLM call span (check `is_llm_call` first)."""
    attrs = span.attributes
    record: dict[str, Any] = {}
    if span.trace_id and span.span_id:
        # An exporter's retry re-sends the same ids: the pipeline counts the record once.
        record["id"] = f"{span.trace_id}:{span.span_id}"
    if 0 < span.start_ns < 10**20:
        record["ts"] = span.start_ns / 1e9
        if span.end_ns >= span.start_ns:
            record["latency_ms"] = (span.end_ns - span.start_ns) / 1e6
    app = app_of(span.resource, options)
    if app is not None:
        record["app"] = app
    for name, keys in STRING_FIELDS:
        value = _first(attrs, keys)
        if value is not None:
            text = str(value)[:_MAX_SHORT]
            record[name] = text.lower() if name == "provider" else text
    request_model = _invocation_model(attrs)
    if request_model is not None:  # OpenInference: the model asked for, as the others give
        record["model"] = request_model[:_MAX_SHORT]
    for name, keys in TOKEN_FIELDS:
        value = _first(attrs, keys)
        if isinstance(value, int) and not isinstance(value, bool):
            record[name] = value
    ttft_ms = _ttft_ms(span)
    if ttft_ms is not None:
        record["ttft_ms"] = ttft_ms
    _add_content(record, span, logs, options)
    return record


def _add_content(
    record: dict[str, Any], span: OtlpSpan, logs: Sequence[OtlpLog], options: MappingOptions
) -> None:
    events = events_of(span, logs)
    limit = options.max_text_chars
    cut: list[str] = []
    turns = prompt_turns(span, events)
    if turns:
        record["messages"] = [
            {"role": role[:_MAX_SHORT], "content": _cut(text, limit, cut, "prompt")}
            for role, text in turns
        ]
    response = _cut(response_text(span, events), limit, cut, "response")
    if response is not None:
        record["response"] = response
    error = _cut(_error_of(span), limit, cut, "error")
    if error is not None:
        record["status"] = "error"
        record["error"] = error
    metadata = _metadata(span, cut, options)
    if metadata is not None:
        record["metadata"] = metadata
