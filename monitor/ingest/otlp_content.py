"""Prompts and completions of an LLM call span, wherever its instrumentation put them.

Pure functions over the decoded span (`otlp_decode`), its events and the log records
correlated with it. Each source is one entry of `PROMPT_SOURCES` / `RESPONSE_SOURCES`, tried
in order; the first that yields text wins (docs/opentelemetry.md has the table):

- upstream GenAI conventions: `gen_ai.input.messages` / `gen_ai.output.messages` /
  `gen_ai.system_instructions` (a JSON string on spans, structured on log records), the
  deprecated span events `gen_ai.content.prompt` / `gen_ai.content.completion`, and the
  deprecated log events `gen_ai.{system,user,assistant,tool}.message` and `gen_ai.choice`;
- OpenLLMetry: `gen_ai.prompt.{i}.role/content`, `gen_ai.completion.{i}.content`;
- OpenInference: `llm.input_messages.{i}.message.role/content`, `llm.output_messages.{i}...`,
  and `input.value` / `output.value` when they are plain text.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from lookout.monitor.ingest.otlp_decode import OtlpLog, OtlpSpan

Turn = tuple[str, str]  # (role, text)
# One event as the content sources see it: span events and log records alike.
Event = tuple[str, dict[str, Any], Any]  # (name, attributes, body)

DETAILS_EVENT = "gen_ai.client.inference.operation.details"
_ROLE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def events_of(span: OtlpSpan, logs: Sequence[OtlpLog]) -> list[Event]:
    if not span.events and not logs:
        return []
    return [(e.name, e.attributes, None) for e in span.events] + [
        (log.event_name, log.attributes, log.body) for log in logs
    ]


def _parsed(value: Any) -> Any:
    """A JSON-encoded attribute (spans carry structure as strings) or the value itself."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return msgspec.json.decode(value)
        except (msgspec.DecodeError, RecursionError):
            return value
    return value


def text_of(content: Any) -> str | None:
    """Text of a message's content: a string, or parts (`{type: text, content|text}`)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if not isinstance(content, list):
        return str(content)
    texts: list[str] = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif isinstance(part, dict) and part.get("type", "text") == "text":
            text = part.get("content", part.get("text"))
            if isinstance(text, str):
                texts.append(text)
    return "\n".join(texts) or None


def _turns(messages: Any) -> list[Turn]:
    """Semconv messages (`{role, parts}`) or chat messages (`{role, content}`) as turns."""
    messages = _parsed(messages)
    if isinstance(messages, str):
        return [("user", messages)]
    if isinstance(messages, dict):
        messages = [messages]
    if not isinstance(messages, list):
        return []
    turns: list[Turn] = []
    for m in messages:
        if not isinstance(m, dict):
            continue
        text = text_of(m.get("parts", m.get("content")))
        if text is not None:
            turns.append((str(m.get("role") or "user"), text))
    return turns


def _indexed(attrs: dict[str, Any], prefix: str, role_key: str, content_key: str) -> list[Turn]:
    """`{prefix}{i}.{role_key}` / `{prefix}{i}.{content_key}` for i = 0, 1, ... (flattened)."""
    turns: list[Turn] = []
    i = 0
    while True:
        role = attrs.get(f"{prefix}{i}.{role_key}")
        content = attrs.get(f"{prefix}{i}.{content_key}")
        if role is None and content is None:
            if i == 0 or f"{prefix}{i + 1}.{role_key}" not in attrs:
                return turns
        elif content is not None:
            text = text_of(_parsed(content)) if not isinstance(content, str) else content
            if text is not None:
                turns.append((str(role or "user"), text))
        i += 1


def _semconv_prompt(span: OtlpSpan, events: list[Event]) -> list[Turn]:
    attrs = span.attributes
    turns = _turns(attrs.get("gen_ai.input.messages"))
    if turns:
        system = _turns_text(attrs.get("gen_ai.system_instructions"))
        return [("system", system), *turns] if system else turns
    for name, event_attrs, _ in events:
        if name == DETAILS_EVENT:
            turns = _turns(event_attrs.get("gen_ai.input.messages"))
            if turns:
                return turns
    return []


def _turns_text(value: Any) -> str | None:
    if value is None:
        return None
    return "\n".join(text for _, text in _turns(value)) or None


def _openllmetry_prompt(span: OtlpSpan, events: list[Event]) -> list[Turn]:
    return _indexed(span.attributes, "gen_ai.prompt.", "role", "content")


def _openinference_prompt(span: OtlpSpan, events: list[Event]) -> list[Turn]:
    attrs = span.attributes
    turns = _indexed(attrs, "llm.input_messages.", "message.role", "message.content")
    if turns:
        return turns
    value = attrs.get("input.value")
    if isinstance(value, str) and attrs.get("input.mime_type", "text/plain") == "text/plain":
        return [("user", value)]
    return []


def _prompt_events(span: OtlpSpan, events: list[Event]) -> list[Turn]:
    turns: list[Turn] = []
    for name, attrs, body in events:
        if name == "gen_ai.content.prompt":
            turns += _turns(attrs.get("gen_ai.prompt"))
        elif name in _ROLE_EVENTS:
            content = body.get("content") if isinstance(body, dict) else body
            text = text_of(_parsed(content))
            if text is not None:
                turns.append((_ROLE_EVENTS[name], text))
    return turns


def _semconv_response(span: OtlpSpan, events: list[Event]) -> str | None:
    text = _turns_text(span.attributes.get("gen_ai.output.messages"))
    if text is not None:
        return text
    for name, attrs, _ in events:
        if name == DETAILS_EVENT:
            text = _turns_text(attrs.get("gen_ai.output.messages"))
            if text is not None:
                return text
    return None


def _openllmetry_response(span: OtlpSpan, events: list[Event]) -> str | None:
    turns = _indexed(span.attributes, "gen_ai.completion.", "role", "content")
    return "\n".join(text for _, text in turns) or None


def _openinference_response(span: OtlpSpan, events: list[Event]) -> str | None:
    attrs = span.attributes
    turns = _indexed(attrs, "llm.output_messages.", "message.role", "message.content")
    if turns:
        return "\n".join(text for _, text in turns)
    value = attrs.get("output.value")
    if isinstance(value, str) and attrs.get("output.mime_type", "text/plain") == "text/plain":
        return value
    return None


def _response_events(span: OtlpSpan, events: list[Event]) -> str | None:
    texts: list[str] = []
    for name, attrs, body in events:
        text = None
        if name == "gen_ai.content.completion":
            text = _turns_text(attrs.get("gen_ai.completion"))
        elif name == "gen_ai.choice" and isinstance(body, dict):
            message = body.get("message")
            content = message.get("content") if isinstance(message, dict) else None
            text = text_of(_parsed(content))
        if text is not None:
            texts.append(text)
    return "\n".join(texts) or None


PROMPT_SOURCES: tuple[Callable[[OtlpSpan, list[Event]], list[Turn]], ...] = (
    _semconv_prompt,
    _openllmetry_prompt,
    _openinference_prompt,
    _prompt_events,
)
RESPONSE_SOURCES: tuple[Callable[[OtlpSpan, list[Event]], str | None], ...] = (
    _semconv_response,
    _openllmetry_response,
    _openinference_response,
    _response_events,
)


def prompt_turns(span: OtlpSpan, events: list[Event]) -> list[Turn]:
    for source in PROMPT_SOURCES:
        turns = source(span, events)
        if turns:
            return turns
    return []


def response_text(span: OtlpSpan, events: list[Event]) -> str | None:
    for source in RESPONSE_SOURCES:
        text = source(span, events)
        if text is not None:
            return text
    return None


CONTENT_LOG_EVENTS = frozenset({DETAILS_EVENT, "gen_ai.choice", *_ROLE_EVENTS})


def content_logs(logs: Sequence[OtlpLog]) -> Iterator[OtlpLog]:
    """The log records that carry an LLM call's content (the others are not kept)."""
    return (log for log in logs if log.event_name in CONTENT_LOG_EVENTS)
