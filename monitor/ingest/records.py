"""The wire format: one LLM call as JSON, decoded and validated on the hot path.

Decoding uses typed msgspec Structs (0.7 us per 1 KB record here, against 2.55 us for a
pydantic model; see docs/benchmarks.md). A batch is decoded in one pass; only when that
fails is it split, so one bad record never costs the good ones in the same message.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

from lookout.monitor.ingest.tool_use import Retrieval, ToolCall, ToolCalls

# Plausible ranges: a value past them is a bug or an attack, and one of them would turn an
# app's percentiles and cost per hour into nonsense for a whole window (docs/wire-format.md).
MAX_DURATION_MS = 86_400_000.0  # a day
MAX_TOKENS = 1_000_000_000
DurationMs = Annotated[float, msgspec.Meta(ge=0, le=MAX_DURATION_MS)]
TokenCount = Annotated[int, msgspec.Meta(ge=0, le=MAX_TOKENS)]
ShortStr = Annotated[str, msgspec.Meta(max_length=256)]
TOPIC_PREFIX = "llm/records/"


class RejectReason(enum.StrEnum):
    INVALID_JSON = "invalid_json"
    INVALID_UTF8 = "invalid_utf8"
    NOT_AN_OBJECT = "not_an_object"
    WRONG_TYPE = "wrong_type"
    NEGATIVE_VALUE = "negative_value"
    INVALID_VALUE = "invalid_value"
    TOO_LARGE = "too_large"
    OUT_OF_RANGE = "out_of_range"
    TOO_DEEP = "too_deep"
    TOO_MANY_RECORDS = "too_many_records"
    MISSING_FIELD = "missing_field"  # feedback without record_id, key or score


class Message(msgspec.Struct, frozen=True, gc=False):
    role: str
    content: str | list[dict[str, Any]] | None = None


class WireRecord(msgspec.Struct, frozen=True, gc=False):
    """One record as apps send it; aliases are resolved by `normalize`."""

    id: ShortStr | None = None
    ts: str | float | None = None
    app: ShortStr | None = None
    model: ShortStr | None = None
    provider: ShortStr | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    response: str | None = None
    latency_ms: DurationMs | None = None
    ttft_ms: DurationMs | None = None
    input_tokens: TokenCount | None = None
    output_tokens: TokenCount | None = None
    status: Literal["ok", "error"] | None = None
    error: str | None = None
    user_id: ShortStr | None = None
    session_id: ShortStr | None = None
    metadata: msgspec.Raw = msgspec.Raw(b"")
    tools: ToolCalls | None = None
    retrieval: Retrieval | None = None
    gen_ai_request_model: ShortStr | None = msgspec.field(default=None, name="gen_ai.request.model")
    gen_ai_system: ShortStr | None = msgspec.field(default=None, name="gen_ai.system")
    gen_ai_provider_name: ShortStr | None = msgspec.field(default=None, name="gen_ai.provider.name")
    gen_ai_input_tokens: TokenCount | None = msgspec.field(
        default=None, name="gen_ai.usage.input_tokens"
    )
    gen_ai_output_tokens: TokenCount | None = msgspec.field(
        default=None, name="gen_ai.usage.output_tokens"
    )


class Record(msgspec.Struct, gc=False):
    """A validated record with every alias resolved and every default applied.

    `id` is None when the app sent none; the store gives a stored record a fresh one (most
    records are never stored, so the hot path does not pay for a UUID).
    """

    id: str | None
    ts: float
    app: str
    model: str
    status: str
    received_at: float
    provider: str | None = None
    prompt: str | None = None
    response: str | None = None
    latency_ms: float | None = None
    ttft_ms: float | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    error: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    metadata: str | None = None
    tools: list[ToolCall] | None = None
    retrieval: Retrieval | None = None


@dataclass(frozen=True, slots=True)
class Rejection:
    reason: RejectReason
    detail: str
    sample: bytes
    count: int = 1  # records it stands for: those past the per-message cap share one


@dataclass(frozen=True, slots=True)
class DecodeLimits:
    max_payload_bytes: int = 1024 * 1024
    max_metadata_bytes: int = 16_384
    max_text_chars: int = 200_000
    # About 10 us of loop time per record: 1,000 keep one message's step near 10 ms.
    max_records_per_message: int = 1_000


class InvalidRecord(ValueError):
    def __init__(self, reason: RejectReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_batch_decoder = msgspec.json.Decoder(list[WireRecord] | WireRecord)
_raw_batch_decoder = msgspec.json.Decoder(list[msgspec.Raw] | msgspec.Raw)
_one_decoder = msgspec.json.Decoder(WireRecord)


def _reason_for(exc: msgspec.ValidationError) -> RejectReason:
    text = str(exc)
    if "Expected `object" in text and "- at `$" not in text:
        return RejectReason.NOT_AN_OBJECT
    if ">= 0" in text:
        return RejectReason.NEGATIVE_VALUE
    if "length <=" in text:
        return RejectReason.TOO_LARGE
    if "` <= " in text or "out of range" in text:
        return RejectReason.OUT_OF_RANGE
    if "Invalid enum value" in text:
        return RejectReason.INVALID_VALUE
    return RejectReason.WRONG_TYPE


def _parse_ts(value: str | float | None, received_at: float) -> float:
    if value is None:
        return received_at
    if isinstance(value, float | int):
        if not 0 <= value < 1e11:
            raise InvalidRecord(RejectReason.INVALID_VALUE, f"ts {value} is not epoch seconds")
        return float(value)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRecord(
            RejectReason.INVALID_VALUE, f"ts {value[:40]!r} is not RFC 3339"
        ) from None
    if parsed.tzinfo is None:
        raise InvalidRecord(RejectReason.INVALID_VALUE, "ts needs a UTC offset (RFC 3339)")
    return parsed.timestamp()


def _content_text(content: str | list[dict[str, Any]] | None) -> str | None:
    if content is None or isinstance(content, str):
        return content
    parts = [p.get("text") for p in content if isinstance(p, dict)]
    return "\n".join(p for p in parts if isinstance(p, str)) or None


def _prompt_of(wire: WireRecord) -> str | None:
    if wire.prompt is not None:
        return wire.prompt
    if wire.messages:
        for message in reversed(wire.messages):
            if message.role == "user":
                return _content_text(message.content)
        return _content_text(wire.messages[-1].content)
    return None


_topic_apps: dict[str, str | None] = {}


def app_from_topic(topic: str | None) -> str | None:
    """The level after `llm/records/`; memoised, since a deployment has few topics."""
    if topic is None:
        return None
    app = _topic_apps.get(topic, "")
    if app != "":
        return app
    app = None
    if topic.startswith(TOPIC_PREFIX):
        app = topic[len(TOPIC_PREFIX) :].split("/", 1)[0][:256] or None
    if len(_topic_apps) < 10_000:
        _topic_apps[topic] = app
    return app


def normalize(
    wire: WireRecord, topic_app: str | None, received_at: float, limits: DecodeLimits
) -> Record:
    # Hot path: positional construction is ~6x cheaper than keywords for a 17-field Struct.
    meta = wire.metadata
    metadata: str | None = None
    if len(meta):
        raw = bytes(meta)
        if len(raw) > limits.max_metadata_bytes:
            raise InvalidRecord(
                RejectReason.TOO_LARGE,
                f"metadata is {len(raw)} bytes, over the limit of {limits.max_metadata_bytes}",
            )
        if raw[:1] != b"{":
            raise InvalidRecord(RejectReason.WRONG_TYPE, "metadata must be an object")
        metadata = raw.decode("utf-8")
    prompt = wire.prompt
    if prompt is None and wire.messages:
        prompt = _prompt_of(wire)
    response = wire.response
    error = wire.error
    max_chars = limits.max_text_chars
    if (
        (prompt is not None and len(prompt) > max_chars)
        or (response is not None and len(response) > max_chars)
        or (error is not None and len(error) > max_chars)
    ):
        raise InvalidRecord(
            RejectReason.TOO_LARGE, f"prompt, response or error over {max_chars} characters"
        )
    ts = wire.ts
    input_tokens = wire.input_tokens
    output_tokens = wire.output_tokens
    return Record(
        wire.id,
        ts if type(ts) is float and 0.0 <= ts < 1e11 else _parse_ts(ts, received_at),
        wire.app or topic_app or "default",
        wire.model or wire.gen_ai_request_model or "unknown",
        wire.status or ("ok" if error is None else "error"),
        received_at,
        wire.provider or wire.gen_ai_provider_name or wire.gen_ai_system,
        prompt,
        response,
        wire.latency_ms,
        wire.ttft_ms,
        input_tokens if input_tokens is not None else wire.gen_ai_input_tokens,
        output_tokens if output_tokens is not None else wire.gen_ai_output_tokens,
        error,
        wire.user_id,
        wire.session_id,
        metadata,
        wire.tools,
        wire.retrieval,
    )


@dataclass(frozen=True, slots=True)
class Decoded:
    records: list[Record]
    rejections: list[Rejection]


def _sample(data: bytes, limit: int = 4096) -> bytes:
    return bytes(data[:limit])


def _normalize_all(
    wires: list[WireRecord],
    raws: list[bytes] | None,  # the original bytes of each wire record, when known
    topic_app: str | None,
    received_at: float,
    limits: DecodeLimits,
) -> Decoded:
    records: list[Record] = []
    rejections: list[Rejection] = []
    for i, wire in enumerate(wires):
        try:
            records.append(normalize(wire, topic_app, received_at, limits))
        except InvalidRecord as exc:
            sample = _sample(raws[i]) if raws is not None else b""
            rejections.append(Rejection(exc.reason, str(exc), sample))
    return Decoded(records, rejections)


def decode_payload(
    payload: bytes, topic: str | None, received_at: float, limits: DecodeLimits
) -> Decoded:
    """Decode one message: a record or a JSON array of records."""
    if len(payload) > limits.max_payload_bytes:
        detail = f"payload is {len(payload)} bytes, over the limit of {limits.max_payload_bytes}"
        return Decoded([], [Rejection(RejectReason.TOO_LARGE, detail, _sample(payload))])
    if not payload.isascii():
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"payload is not UTF-8 (byte {exc.start})"
            return Decoded([], [Rejection(RejectReason.INVALID_UTF8, detail, _sample(payload))])
    try:
        return _decode_json(payload, app_from_topic(topic), received_at, limits)
    except RecursionError:
        # msgspec nests as deep as Python's recursion limit allows (about 1,000 levels here),
        # also while skipping unknown fields; deeper is an attack, not a record.
        detail = "JSON nested too deeply"
        return Decoded([], [Rejection(RejectReason.TOO_DEEP, detail, _sample(payload))])


def _decode_json(
    payload: bytes, topic_app: str | None, received_at: float, limits: DecodeLimits
) -> Decoded:
    if payload.count(b"{") > limits.max_records_per_message:  # maybe over the cap: 0.2 ms/MB
        capped = _decode_capped(payload, topic_app, received_at, limits)
        if capped is not None:
            return capped
    try:
        decoded = _batch_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        reason = RejectReason.INVALID_JSON
        if isinstance(exc, msgspec.ValidationError):
            reason = _reason_for(exc)
            if reason is not RejectReason.NOT_AN_OBJECT and payload.lstrip()[:1] == b"[":
                return _decode_split(payload, topic_app, received_at, limits)
        return Decoded([], [Rejection(reason, str(exc), _sample(payload))])
    if not isinstance(decoded, list):
        return _normalize_all([decoded], [payload], topic_app, received_at, limits)
    cap = limits.max_records_per_message
    result = _normalize_all(decoded[:cap], None, topic_app, received_at, limits)
    if result.rejections:
        # Rare: split the batch again so each rejection keeps its record's original bytes.
        return _decode_split(payload, topic_app, received_at, limits)
    if len(decoded) > cap:
        result.rejections.append(_over_cap(payload, len(decoded), cap))
    return result


def _decode_capped(
    payload: bytes, topic_app: str | None, received_at: float, limits: DecodeLimits
) -> Decoded | None:
    """A batch over the cap: only its first records are decoded into structs. Typed decoding
    of 100,000 tiny records (and freeing them) held the loop ~65 ms; splitting them as raw
    slices ~15 ms. None when the message is not such a batch."""
    try:
        raw_items = _raw_batch_decoder.decode(payload)
    except msgspec.DecodeError:
        return None  # the usual path says why
    cap = limits.max_records_per_message
    if not isinstance(raw_items, list) or len(raw_items) <= cap:
        return None
    head = b"[" + b",".join([bytes(raw) for raw in raw_items[:cap]]) + b"]"
    result = _decode_json(head, topic_app, received_at, limits)
    result.rejections.append(_over_cap(payload, len(raw_items), cap))
    return result


def _over_cap(payload: bytes, total: int, cap: int) -> Rejection:
    detail = f"records {cap + 1} to {total} are over the limit of {cap} records per message"
    return Rejection(RejectReason.TOO_MANY_RECORDS, detail, _sample(payload), total - cap)


def _decode_split(
    payload: bytes, topic_app: str | None, received_at: float, limits: DecodeLimits
) -> Decoded:
    try:
        raw_items = _raw_batch_decoder.decode(payload)
    except msgspec.DecodeError as exc:
        # `[""` fails typed decoding at the string, before the parser sees it is cut short.
        return Decoded([], [Rejection(RejectReason.INVALID_JSON, str(exc), _sample(payload))])
    assert isinstance(raw_items, list)
    cap = limits.max_records_per_message
    wires: list[WireRecord] = []
    raws: list[bytes] = []
    rejections: list[Rejection] = []
    for i, raw in enumerate(raw_items[:cap]):
        item = bytes(raw)
        try:
            wires.append(_one_decoder.decode(item))
            raws.append(item)
        except msgspec.ValidationError as exc:
            detail = f"record {i}: {exc}"
            rejections.append(Rejection(_reason_for_item(exc), detail, _sample(item)))
    result = _normalize_all(wires, raws, topic_app, received_at, limits)
    rejections += result.rejections
    if len(raw_items) > cap:
        rejections.append(_over_cap(payload, len(raw_items), cap))
    return Decoded(result.records, rejections)


def _reason_for_item(exc: msgspec.ValidationError) -> RejectReason:
    if str(exc).startswith("Expected `object`"):
        return RejectReason.NOT_AN_OBJECT
    return _reason_for(exc)


# For the feedback decoder (ingest/feedback.py), which shares the timestamp and error rules.
parse_ts = _parse_ts
reason_for = _reason_for
