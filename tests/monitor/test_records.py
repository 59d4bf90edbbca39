"""Every shape of the wire format decodes; bad input is rejected with a reason."""

from __future__ import annotations

import json

import pytest

from lookout.monitor.ingest.records import Decoded, DecodeLimits, RejectReason, decode_payload

NOW = 1_700_000_000.0
LIMITS = DecodeLimits(max_payload_bytes=4096, max_metadata_bytes=64, max_text_chars=500)


def dec(
    obj: object, topic: str | None = "llm/records/shop", limits: DecodeLimits = LIMITS
) -> Decoded:
    payload = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return decode_payload(payload, topic, NOW, limits)


def test_full_record_decodes_every_field() -> None:
    out = dec(
        {
            "id": "r1",
            "ts": "2024-05-01T12:00:00Z",
            "app": "bot",
            "model": "gpt-4o-mini",
            "provider": "openai",
            "prompt": "hi",
            "response": "hello",
            "latency_ms": 812.5,
            "ttft_ms": 120,
            "input_tokens": 10,
            "output_tokens": 3,
            "status": "ok",
            "user_id": "u",
            "session_id": "s",
            "metadata": {"k": [1, 2]},
        }
    )
    assert out.rejections == []
    [r] = out.records
    assert (r.id, r.app, r.model, r.provider, r.prompt, r.response) == (
        "r1",
        "bot",
        "gpt-4o-mini",
        "openai",
        "hi",
        "hello",
    )
    assert r.ts == 1714564800.0
    assert (r.latency_ms, r.ttft_ms, r.input_tokens, r.output_tokens) == (812.5, 120, 10, 3)
    assert r.status == "ok"
    assert json.loads(r.metadata or "") == {"k": [1, 2]}
    assert (r.user_id, r.session_id) == ("u", "s")


def test_defaults_come_from_topic_and_receive_time() -> None:
    [r] = dec({"latency_ms": 5}).records
    assert r.app == "shop"
    assert r.model == "unknown"
    assert r.ts == NOW
    assert r.status == "ok"
    assert r.id is None


def test_app_defaults_to_default_off_the_records_tree() -> None:
    [r] = dec({"latency_ms": 5}, topic="other/topic").records
    assert r.app == "default"


def test_otel_genai_aliases() -> None:
    [r] = dec(
        {
            "gen_ai.request.model": "claude-3",
            "gen_ai.system": "anthropic",
            "gen_ai.usage.input_tokens": 7,
            "gen_ai.usage.output_tokens": 9,
        }
    ).records
    assert (r.model, r.provider, r.input_tokens, r.output_tokens) == ("claude-3", "anthropic", 7, 9)
    [r] = dec({"gen_ai.provider.name": "aws.bedrock"}).records
    assert r.provider == "aws.bedrock"


def test_messages_last_user_turn_is_the_prompt() -> None:
    messages = [
        {"role": "system", "content": "be nice"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image"}]},
    ]
    [r] = dec({"messages": messages}).records
    assert r.prompt == "second"


def test_epoch_seconds_and_offset_timestamps() -> None:
    [a, b] = dec([{"ts": 1700000123.5}, {"ts": "2024-05-01T14:00:00+02:00"}]).records
    assert a.ts == 1700000123.5
    assert b.ts == 1714564800.0


def test_error_field_makes_status_error() -> None:
    [r] = dec({"error": "RateLimitError: 429"}).records
    assert r.status == "error" and r.error == "RateLimitError: 429"


def test_batch_decodes_all_records() -> None:
    out = dec([{"latency_ms": i} for i in range(50)])
    assert len(out.records) == 50 and out.rejections == []


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", RejectReason.INVALID_JSON),
        (b'{"prompt": "\xff\xfe"}', RejectReason.INVALID_UTF8),
        (b"42", RejectReason.NOT_AN_OBJECT),
        (b'{"latency_ms": "slow"}', RejectReason.WRONG_TYPE),
        (b'{"input_tokens": 1.5}', RejectReason.WRONG_TYPE),
        (b'{"latency_ms": -1}', RejectReason.NEGATIVE_VALUE),
        (b'{"output_tokens": -3}', RejectReason.NEGATIVE_VALUE),
        (b'{"status": "maybe"}', RejectReason.INVALID_VALUE),
        (b'{"ts": "yesterday"}', RejectReason.INVALID_VALUE),
        (b'{"ts": "2024-05-01T12:00:00"}', RejectReason.INVALID_VALUE),
        (b'{"metadata": [1]}', RejectReason.WRONG_TYPE),
        (b'{"metadata": {"k": "' + b"x" * 100 + b'"}}', RejectReason.TOO_LARGE),
        (b'{"prompt": "' + b"x" * 600 + b'"}', RejectReason.TOO_LARGE),
        (b'{"app": "' + b"a" * 300 + b'"}', RejectReason.TOO_LARGE),
        (b"[" + b'{"latency_ms": 1},' * 300 + b"{}]", RejectReason.TOO_LARGE),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(payload: bytes, reason: RejectReason) -> None:
    out = dec(payload)
    assert out.records == []
    [rejection] = out.rejections
    assert rejection.reason is reason
    assert rejection.detail
    assert rejection.sample == payload[:4096]


def test_one_bad_record_in_a_batch_keeps_the_good_ones() -> None:
    batch = [{"id": "a"}, {"id": "b", "latency_ms": -5}, 7, {"id": "c", "ts": "nope"}, {"id": "d"}]
    out = dec(batch)
    assert [r.id for r in out.records] == ["a", "d"]
    reasons = sorted(r.reason.value for r in out.rejections)
    assert reasons == ["invalid_value", "negative_value", "not_an_object"]
    bad = next(r for r in out.rejections if r.reason is RejectReason.NEGATIVE_VALUE)
    assert json.loads(bad.sample) == {"id": "b", "latency_ms": -5}
    assert bad.detail.startswith("record 1:")
