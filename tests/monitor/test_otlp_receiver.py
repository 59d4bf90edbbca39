"""The OTLP/HTTP receiver on a running daemon: encodings, answers, limits, bad bodies, tokens,
retries and the span/log correlation."""

from __future__ import annotations

import asyncio
import gzip
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.ingest.otlp_decode import keyvalues
from tests.conftest import eventually, running, sample_value

PROTOBUF = {"Content-Type": "application/x-protobuf"}
START = 1_732_800_000_000_000_000


def llm_span(span_id: int, **attrs: Any) -> Span:
    base = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o-mini"}
    return Span(
        trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"),
        span_id=span_id.to_bytes(8, "big"),
        name="chat gpt-4o-mini",
        start_time_unix_nano=START,
        end_time_unix_nano=START + 300_000_000,
        attributes=keyvalues({**base, **attrs}),
        status=Status(code=Status.STATUS_CODE_UNSET),
    )


def traces_request(spans: list[Span], app: str = "shop") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.extend(keyvalues({"service.name": app}))
    resource_spans.scope_spans.add().spans.extend(spans)
    return request


def logs_request(span_id: int, app: str = "shop") -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.extend(keyvalues({"service.name": app}))
    record = resource_logs.scope_logs.add().log_records.add()
    record.trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    record.span_id = span_id.to_bytes(8, "big")
    record.event_name = "gen_ai.client.inference.operation.details"
    messages = {
        "gen_ai.input.messages": [{"role": "user", "parts": [{"type": "text", "content": "q?"}]}],
        "gen_ai.output.messages": [{"role": "assistant", "parts": [{"content": "a."}]}],
    }
    record.attributes.extend(keyvalues(messages))
    return request


@asynccontextmanager
async def otlp_daemon(
    settings_for: Callable[..., Settings], tmp_path: Path, **otlp: Any
) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient]]:
    settings = settings_for(
        otlp={"enabled": True, "bind": "127.0.0.1:0", **otlp},
        store={"url": f"sqlite:///{tmp_path}/otlp.db", "record_sample_rate": 1.0},
    )
    async with running(Daemon(settings)) as d, httpx.AsyncClient() as http:
        assert d.otlp is not None
        http.base_url = httpx.URL(f"http://127.0.0.1:{d.otlp.port}")
        yield d, http


def stored(tmp_path: Path) -> dict[str, dict[str, Any]]:
    with sqlite3.connect(tmp_path / "otlp.db") as conn:
        conn.row_factory = sqlite3.Row
        return {r["id"]: dict(r) for r in conn.execute("SELECT * FROM records")}


def requests_counted(d: Daemon, signal: str, code: int) -> float:
    return sample_value(d, "lookout_otlp_requests_total", {"signal": signal, "code": str(code)})


async def test_protobuf_partial_success_ignored_spans_and_retries(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    other = Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="GET /orders")
    spans = [llm_span(1), llm_span(2, **{"gen_ai.usage.input_tokens": 10**12}), other]
    body = traces_request(spans).SerializeToString()
    async with otlp_daemon(settings_for, tmp_path) as (d, http):
        r = await http.post("/v1/traces", content=body, headers=PROTOBUF)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/x-protobuf"
        answer = ExportTraceServiceResponse.FromString(r.content)
        assert answer.partial_success.rejected_spans == 1
        assert "rejected" in answer.partial_success.error_message
        # The exporter retries the same batch: counted once.
        gzipped = gzip.compress(body)
        retry = await http.post(
            "/v1/traces", content=gzipped, headers={**PROTOBUF, "Content-Encoding": "gzip"}
        )
        assert retry.status_code == 200
        spans_total = "lookout_otlp_spans_total"
        assert sample_value(d, spans_total, {"outcome": "record"}) == 1
        assert sample_value(d, spans_total, {"outcome": "duplicate"}) == 1
        assert sample_value(d, spans_total, {"outcome": "ignored"}) == 2
        assert sample_value(d, spans_total, {"outcome": "rejected"}) == 2
        reasons = [s.reason for s in await d.store.rejected()]
        assert reasons == ["out_of_range", "out_of_range"]
        await d.store.flush()
    record = stored(tmp_path)["0af7651916cd43dd8448eb211c80319c:0000000000000001"]
    assert (record["app"], record["model"], record["latency_ms"]) == ("shop", "gpt-4o-mini", 300)


async def test_bad_bodies_get_their_status_and_the_daemon_goes_on(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    good = traces_request([llm_span(7)]).SerializeToString()
    bomb = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 MiB of zeros in ~8 KiB
    async with otlp_daemon(settings_for, tmp_path, max_body_bytes=64 * 1024) as (d, http):
        malformed = await http.post("/v1/traces", content=b"\xff\xff\xff", headers=PROTOBUF)
        assert malformed.status_code == 400
        bad_json = await http.post(
            "/v1/traces",
            content=b'{"resourceSpans": 3}',
            headers={"Content-Type": "application/json"},
        )
        assert bad_json.status_code == 400 and bad_json.json()["code"] == 3
        wrong = await http.post("/v1/traces", content=good, headers={"Content-Type": "text/plain"})
        assert wrong.status_code == 415
        huge = await http.post("/v1/traces", content=b"\0" * (65 * 1024), headers=PROTOBUF)
        assert huge.status_code == 413
        bombed = await http.post(
            "/v1/logs", content=bomb, headers={**PROTOBUF, "Content-Encoding": "gzip"}
        )
        assert bombed.status_code == 413
        assert len(bomb) < 64 * 1024  # refused for what it inflates to, not its size
        assert requests_counted(d, "traces", 400) == 2
        assert requests_counted(d, "traces", 415) == 1
        assert requests_counted(d, "traces", 413) == 1
        assert requests_counted(d, "logs", 413) == 1
        fine = await http.post("/v1/traces", content=good, headers=PROTOBUF)
        assert fine.status_code == 200
        assert sample_value(d, "lookout_otlp_spans_total", {"outcome": "record"}) == 1


async def test_token_required_when_set(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    body = traces_request([llm_span(1)]).SerializeToString()
    async with otlp_daemon(settings_for, tmp_path, token="otlp-secret-token-1") as (d, http):
        assert (await http.post("/v1/traces", content=body, headers=PROTOBUF)).status_code == 401
        authorized = {**PROTOBUF, "Authorization": "Bearer otlp-secret-token-1"}
        assert (await http.post("/v1/traces", content=body, headers=authorized)).status_code == 200
        assert requests_counted(d, "traces", 401) == 1


async def test_logs_before_or_after_their_span_give_the_record_its_text(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    async with otlp_daemon(settings_for, tmp_path, log_wait_s=10) as (d, http):
        assert d.otlp is not None
        # Logs first: they wait in the buffer for span 1.
        first = await http.post(
            "/v1/logs", content=logs_request(1).SerializeToString(), headers=PROTOBUF
        )
        assert first.status_code == 200
        assert (
            await http.post(
                "/v1/traces",
                content=traces_request([llm_span(1)]).SerializeToString(),
                headers=PROTOBUF,
            )
        ).status_code == 200
        # Span first: this app sends its content as logs, so span 2 waits for them.
        traces = asyncio.create_task(
            http.post(
                "/v1/traces",
                content=traces_request([llm_span(2)]).SerializeToString(),
                headers=PROTOBUF,
            )
        )
        await eventually(lambda: d.otlp is not None and d.otlp.waiting == 1)
        assert not traces.done()
        await http.post("/v1/logs", content=logs_request(2).SerializeToString(), headers=PROTOBUF)
        assert (await asyncio.wait_for(traces, 5)).status_code == 200
        await d.store.flush()
        assert sample_value(d, "lookout_otlp_log_records_total", {"outcome": "correlated"}) == 2
    records = stored(tmp_path)
    for span_id in (1, 2):
        record = records[f"0af7651916cd43dd8448eb211c80319c:{span_id:016x}"]
        assert (record["prompt"], record["response"]) == ("q?", "a.")


async def test_otlp_json_with_string_integers_and_enum_numbers(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    attributes = [
        {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
        {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
        {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
        {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 5}},
    ]
    span = {
        "traceId": "5b8efff798038103d269b633813fc60c",
        "spanId": "eee19b7ec3c1b174",
        "name": "chat gpt-4o",
        "kind": 3,
        "startTimeUnixNano": str(START),
        "endTimeUnixNano": str(START + 1_500_000_000),
        "attributes": attributes,
        "status": {"code": 2, "message": "boom"},
    }
    body = {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "js-app"}}]
                },
                "scopeSpans": [{"scope": {"name": "x"}, "spans": [span]}],
            }
        ]
    }
    async with otlp_daemon(settings_for, tmp_path) as (d, http):
        r = await http.post(
            "/v1/traces", content=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 200 and r.json() == {}
        await d.store.flush()
    record = stored(tmp_path)["5b8efff798038103d269b633813fc60c:eee19b7ec3c1b174"]
    assert (record["app"], record["input_tokens"], record["output_tokens"]) == ("js-app", 12, 5)
    assert (record["status"], record["error"], record["latency_ms"]) == ("error", "boom", 1500)


async def test_back_pressure_answers_503_with_retry_after(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = settings_for(
        otlp={"enabled": True, "bind": "127.0.0.1:0"},
        store={
            "url": f"sqlite:///{tmp_path}/otlp.db",
            "record_sample_rate": 1.0,
            "queue_size": 100,
            "flush_interval_s": 3,
        },
    )
    first = traces_request([llm_span(i) for i in range(1, 301)]).SerializeToString()
    second = traces_request([llm_span(1000)]).SerializeToString()
    async with running(Daemon(settings)) as d, httpx.AsyncClient() as http:
        assert d.otlp is not None
        url = f"http://127.0.0.1:{d.otlp.port}/v1/traces"
        pending = asyncio.create_task(http.post(url, content=first, headers=PROTOBUF))
        spans_total = "lookout_otlp_spans_total"
        await eventually(lambda: sample_value(d, spans_total, {"outcome": "record"}) == 300)
        busy = await http.post(url, content=second, headers=PROTOBUF)
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
        assert requests_counted(d, "traces", 503) == 1
        assert (await asyncio.wait_for(pending, 10)).status_code == 200  # once committed
        retried = await http.post(url, content=second, headers=PROTOBUF)
        assert retried.status_code == 200


async def test_otlp_json_logs_join_their_span(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    ids = {"traceId": "5b8efff798038103d269b633813fc60c", "spanId": "0000000000000abc"}

    def text(value: str) -> dict[str, Any]:
        return {"stringValue": value}

    def kvlist(**values: Any) -> dict[str, Any]:
        return {"kvlistValue": {"values": [{"key": k, "value": v} for k, v in values.items()]}}

    resource = {"attributes": [{"key": "service.name", "value": text("js-app")}]}
    user = {**ids, "eventName": "gen_ai.user.message", "body": kvlist(content=text("where?"))}
    choice = {
        **ids,
        "attributes": [{"key": "event.name", "value": text("gen_ai.choice")}],
        "body": kvlist(index={"intValue": "0"}, message=kvlist(content=text("here."))),
    }
    other = {"body": text("GET /orders 200"), "severityNumber": 9}
    logs = {
        "resourceLogs": [
            {"resource": resource, "scopeLogs": [{"logRecords": [user, choice, other]}]}
        ]
    }
    span = {
        **ids,
        "name": "chat",
        "startTimeUnixNano": str(START),
        "endTimeUnixNano": str(START + 10**9),
        "attributes": [{"key": "gen_ai.operation.name", "value": text("chat")}],
    }
    traces = {"resourceSpans": [{"resource": resource, "scopeSpans": [{"spans": [span]}]}]}
    json_type = {"Content-Type": "application/json"}
    async with otlp_daemon(settings_for, tmp_path) as (d, http):
        assert (
            await http.post("/v1/logs", content=json.dumps(logs), headers=json_type)
        ).json() == {}
        assert (
            await http.post("/v1/traces", content=json.dumps(traces), headers=json_type)
        ).status_code == 200
        log_total = "lookout_otlp_log_records_total"
        assert sample_value(d, log_total, {"outcome": "ignored"}) == 1
        assert sample_value(d, log_total, {"outcome": "correlated"}) == 2
        await d.store.flush()
    record = stored(tmp_path)["5b8efff798038103d269b633813fc60c:0000000000000abc"]
    assert (record["app"], record["prompt"], record["response"]) == ("js-app", "where?", "here.")


async def test_a_large_export_is_split_within_the_decoders_limits(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    messages = json.dumps([{"role": "user", "parts": [{"type": "text", "content": "where?"}]}])
    spans = [llm_span(i, **{"gen_ai.input.messages": messages}) for i in range(1, 1201)]
    body = traces_request(spans).SerializeToString()
    async with otlp_daemon(settings_for, tmp_path) as (d, http):
        answer = await http.post("/v1/traces", content=body, headers=PROTOBUF)
        assert answer.status_code == 200
        assert not ExportTraceServiceResponse.FromString(answer.content).HasField("partial_success")
        assert sample_value(d, "lookout_otlp_spans_total", {"outcome": "record"}) == 1200
        # more than one message: no batch over metrics.max_records_per_message (1,000)
        assert sample_value(d, "lookout_messages_received_total", {"source": "otlp"}) >= 2
        assert (
            sample_value(d, "lookout_records_rejected_total", {"reason": "too_many_records"}) == 0
        )
