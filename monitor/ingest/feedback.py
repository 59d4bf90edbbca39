"""The feedback wire format: a user's judgement of one record, as JSON (docs/wire-format.md).

Feedback is rare next to records (a few per hundred calls), so each event of a message is
decoded on its own: a bad one is rejected with its own bytes, and the cost does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

import msgspec

from lookout.monitor.ingest.records import (
    DecodeLimits,
    InvalidRecord,
    Rejection,
    RejectReason,
    ShortStr,
    parse_ts,
    reason_for,
)

FEEDBACK_TOPIC_PREFIX = "llm/feedback/"
MAX_SCORE = 1e9  # past it a score is a bug: it would swamp an app's mean for a whole window
Score = Annotated[float, msgspec.Meta(ge=-MAX_SCORE, le=MAX_SCORE)]


class WireFeedback(msgspec.Struct, frozen=True, gc=False):
    """One feedback event as apps send it."""

    record_id: ShortStr
    key: ShortStr
    score: Score
    app: ShortStr | None = None
    value: ShortStr | None = None
    comment: str | None = None
    user_id: ShortStr | None = None
    ts: str | float | None = None


class Feedback(msgspec.Struct, frozen=True, gc=False):
    """A validated feedback event; `comment` is redacted before it is stored."""

    app: str
    record_id: str
    key: str
    user_id: str  # "" when the app sent none
    score: float
    ts: float
    received_at: float
    value: str | None = None
    comment: str | None = None

    @property
    def identity(self) -> tuple[str, str, str, str]:
        """What makes two events one: a user's feedback of one key on one record."""
        return (self.app, self.record_id, self.key, self.user_id)


@dataclass(frozen=True, slots=True)
class DecodedFeedback:
    events: list[Feedback]
    rejections: list[Rejection]


_items_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_one_decoder = msgspec.json.Decoder(WireFeedback)


def app_from_feedback_topic(topic: str | None, filters: list[str]) -> str | None:
    """The level after `llm/feedback/`, as for records; on a topic of another tree, the level
    where a filter's first wildcard is (`apps/feedback/+`: the level after `apps/feedback/`)."""
    if topic is None:
        return None
    prefixes = [FEEDBACK_TOPIC_PREFIX, *(f.split("+", 1)[0].split("#", 1)[0] for f in filters)]
    for prefix in prefixes:
        if prefix.endswith("/") and topic.startswith(prefix):
            return topic[len(prefix) :].split("/", 1)[0][:256] or None
    return None


def _reason(exc: msgspec.ValidationError) -> RejectReason:
    text = str(exc)
    if "missing required field" in text:
        return RejectReason.MISSING_FIELD
    if "` >= -" in text:
        return RejectReason.OUT_OF_RANGE
    if text.startswith("Expected `object`"):
        return RejectReason.NOT_AN_OBJECT
    return reason_for(exc)


def _normalize(
    wire: WireFeedback, topic_app: str | None, received_at: float, max_comment_chars: int
) -> Feedback:
    if wire.comment is not None and len(wire.comment) > max_comment_chars:
        raise InvalidRecord(
            RejectReason.TOO_LARGE, f"comment is over {max_comment_chars} characters"
        )
    return Feedback(
        app=wire.app or topic_app or "default",
        record_id=wire.record_id,
        key=wire.key,
        user_id=wire.user_id or "",
        score=wire.score,
        ts=parse_ts(wire.ts, received_at),
        received_at=received_at,
        value=wire.value,
        comment=wire.comment,
    )


def decode_feedback(
    payload: bytes,
    topic_app: str | None,
    received_at: float,
    limits: DecodeLimits,
    max_comment_chars: int,
) -> DecodedFeedback:
    """One message: a feedback object or a JSON array of them."""
    if len(payload) > limits.max_payload_bytes:
        detail = f"payload is {len(payload)} bytes, over the limit of {limits.max_payload_bytes}"
        return DecodedFeedback([], [Rejection(RejectReason.TOO_LARGE, detail, payload[:4096])])
    if not payload.isascii():
        try:
            payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            detail = f"payload is not UTF-8 (byte {exc.start})"
            return DecodedFeedback(
                [], [Rejection(RejectReason.INVALID_UTF8, detail, payload[:4096])]
            )
    raws: list[msgspec.Raw] | list[bytes] = [payload]
    if payload.lstrip()[:1] == b"[":
        try:
            raws = _items_decoder.decode(payload)
        except (msgspec.DecodeError, RecursionError) as exc:
            reason = RejectReason.INVALID_JSON
            if isinstance(exc, RecursionError):
                reason = RejectReason.TOO_DEEP
            return DecodedFeedback([], [Rejection(reason, str(exc), payload[:4096])])
    cap = limits.max_records_per_message
    events: list[Feedback] = []
    rejections: list[Rejection] = []
    for raw in raws[:cap]:
        item = bytes(raw)
        try:
            wire = _one_decoder.decode(item)
            events.append(_normalize(wire, topic_app, received_at, max_comment_chars))
        except msgspec.ValidationError as exc:
            rejections.append(Rejection(_reason(exc), str(exc), item[:4096]))
        except msgspec.DecodeError as exc:
            rejections.append(Rejection(RejectReason.INVALID_JSON, str(exc), item[:4096]))
        except InvalidRecord as exc:
            rejections.append(Rejection(exc.reason, str(exc), item[:4096]))
        except RecursionError:
            rejections.append(Rejection(RejectReason.TOO_DEEP, "nested too deeply", item[:4096]))
    if len(raws) > cap:
        detail = f"events {cap + 1} to {len(raws)} are over the limit of {cap} per message"
        rejections.append(
            Rejection(RejectReason.TOO_MANY_RECORDS, detail, payload[:4096], len(raws) - cap)
        )
    return DecodedFeedback(events, rejections)
