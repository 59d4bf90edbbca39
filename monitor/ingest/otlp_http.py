"""OTLP/HTTP's wire rules: the body (content type, gzip with a bounded inflate, size), the
answers (in the request's content type, `partial_success`, google.rpc.Status errors) and the
receiver's Prometheus metrics."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)
from prometheus_client import CollectorRegistry, Counter, Gauge

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
CONTENT_TYPES = frozenset({PROTOBUF, JSON})
RETRY_AFTER_S = 1
# google.rpc.Code of each HTTP status we answer with
_RPC_CODES = {400: 3, 413: 3, 415: 3, 429: 8, 503: 14}


class BodyError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def inflate(body: bytes, encoding: str, limit: int) -> bytes:
    """The body without its Content-Encoding, at most `limit` bytes once inflated: a small
    gzip bomb must not cost its inflated size in memory."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise BodyError(415, f"Content-Encoding {encoding[:40]!r} is not supported: gzip or none")
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BodyError(400, f"the body is not valid gzip: {exc}") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise BodyError(413, f"the body inflates to over the limit of {limit} bytes")
    if not inflater.eof:
        raise BodyError(400, "the gzip body is cut short")
    return data


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def status_body(status: int, message: str, content_type: str) -> bytes:
    """A google.rpc.Status (code, message): what OTLP/HTTP answers an error with."""
    code = _RPC_CODES.get(status, 2)
    if content_type == PROTOBUF:
        text = message.encode()
        return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text
    return json.dumps({"code": code, "message": message}).encode()


def error_response(status: int, message: str, content_type: str) -> web.Response:
    kind = content_type if content_type in CONTENT_TYPES else JSON
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status in (429, 503) else None
    return web.Response(
        status=status,
        body=status_body(status, message, kind),
        content_type=kind,
        headers=headers,
    )


def export_response(signal: str, rejected: int, message: str, content_type: str) -> web.Response:
    """200 with `partial_success` when some items were rejected, an empty success otherwise."""
    if content_type == PROTOBUF:
        if signal == "traces":
            traces = ExportTraceServiceResponse()
            if rejected:
                traces.partial_success.CopyFrom(
                    ExportTracePartialSuccess(rejected_spans=rejected, error_message=message)
                )
            body = traces.SerializeToString()
        else:
            logs = ExportLogsServiceResponse()
            if rejected:
                logs.partial_success.CopyFrom(
                    ExportLogsPartialSuccess(rejected_log_records=rejected, error_message=message)
                )
            body = logs.SerializeToString()
        return web.Response(body=body, content_type=PROTOBUF)
    answer: dict[str, object] = {}
    if rejected:
        key = "rejectedSpans" if signal == "traces" else "rejectedLogRecords"
        # int64 is a string in proto3's JSON mapping
        answer["partialSuccess"] = {key: str(rejected), "errorMessage": message}
    return web.Response(body=json.dumps(answer).encode(), content_type=JSON)


@dataclass(frozen=True)
class OtlpMetrics:
    requests: Counter
    spans: Counter
    log_records: Counter
    log_buffer: Gauge

    @classmethod
    def on(cls, registry: CollectorRegistry, buffered: Callable[[], int]) -> OtlpMetrics:
        log_buffer = Gauge(
            "lookout_otlp_log_buffer_records",
            "OTLP log records waiting for their span",
            registry=registry,
        )
        log_buffer.set_function(lambda: float(buffered()))
        return cls(
            requests=Counter(
                "lookout_otlp_requests",
                "OTLP/HTTP export requests by signal and HTTP status answered",
                ["signal", "code"],
                registry=registry,
            ),
            spans=Counter(
                "lookout_otlp_spans",
                "OTLP spans received: record (an LLM call counted), duplicate (a retry), "
                "rejected (an LLM call the decoder refused), ignored (not an LLM call)",
                ["outcome"],
                registry=registry,
            ),
            log_records=Counter(
                "lookout_otlp_log_records",
                "OTLP log records received: buffered (GenAI content kept for its span), "
                "correlated (joined to its span), expired and dropped (never joined), ignored",
                ["outcome"],
                registry=registry,
            ),
            log_buffer=log_buffer,
        )
