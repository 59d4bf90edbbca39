"""OTLP export requests (traces and logs), protobuf or OTLP JSON, as plain typed values.

Both encodings come out the same: spans and log records whose attributes are plain Python
values (str, int, float, bool, list, dict), ids as lowercase hex, times in Unix nanoseconds.
The mapping to lookout records (`otlp_mapping`) reads only these, so it never depends on the
encoding. OTLP JSON is not protobuf's canonical JSON: ids are hex, not base64, keys are
lowerCamelCase and enums integers, so it is walked here rather than parsed by `json_format`.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import msgspec
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

STATUS_ERROR = 2  # opentelemetry.proto.trace.v1.Status.StatusCode.STATUS_CODE_ERROR


class MalformedOtlp(ValueError):
    """The body is not an OTLP export request in the encoding it claims (an HTTP 400)."""


# msgspec Structs, not dataclasses: a frozen dataclass's __init__ costs ~1.7 us a span, a
# Struct's ~0.1 us (bench/otlp.py counts every microsecond of a span).
class SpanEvent(msgspec.Struct, frozen=True):
    name: str
    time_ns: int
    attributes: dict[str, Any]


class OtlpSpan(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str
    name: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    resource: dict[str, Any]  # shared by the spans of one resource: never mutated
    scope: str = ""
    status_code: int = 0
    status_message: str = ""
    events: tuple[SpanEvent, ...] = ()


class OtlpLog(msgspec.Struct, frozen=True):
    trace_id: str
    span_id: str
    time_ns: int
    event_name: str
    body: Any
    attributes: dict[str, Any] = msgspec.field(default_factory=dict)
    resource: dict[str, Any] = msgspec.field(default_factory=dict)


# --- protobuf ---------------------------------------------------------------------------


def _pb_value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "int_value":
        return value.int_value
    if kind == "array_value":
        return [_pb_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _pb_value(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return value.bytes_value.hex()
    if kind is None or kind == "string_value_strindex":
        return None
    return getattr(value, kind)


def _pb_attrs(attributes: Any) -> dict[str, Any]:
    # Hot path (~10 attributes a span): strings and integers inline, the rest by `_pb_value`.
    out: dict[str, Any] = {}
    for kv in attributes:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "string_value":
            out[kv.key] = value.string_value
        elif kind == "int_value":
            out[kv.key] = value.int_value
        else:
            out[kv.key] = _pb_value(value)
    return out


def spans_from_protobuf(body: bytes) -> list[OtlpSpan]:
    try:
        request = ExportTraceServiceRequest.FromString(body)
    except (DecodeError, RecursionError) as exc:
        raise MalformedOtlp(f"not an OTLP ExportTraceServiceRequest: {exc}") from None
    spans: list[OtlpSpan] = []
    for resource_spans in request.resource_spans:
        resource = _pb_attrs(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name
            for s in scope_spans.spans:
                events = (
                    tuple(
                        SpanEvent(e.name, e.time_unix_nano, _pb_attrs(e.attributes))
                        for e in s.events
                    )
                    if s.events
                    else ()
                )
                spans.append(
                    OtlpSpan(
                        s.trace_id.hex(),
                        s.span_id.hex(),
                        s.name,
                        s.start_time_unix_nano,
                        s.end_time_unix_nano,
                        _pb_attrs(s.attributes),
                        resource,
                        scope,
                        s.status.code,
                        s.status.message,
                        events,
                    )
                )
    return spans


def logs_from_protobuf(body: bytes) -> list[OtlpLog]:
    try:
        request = ExportLogsServiceRequest.FromString(body)
    except (DecodeError, RecursionError) as exc:
        raise MalformedOtlp(f"not an OTLP ExportLogsServiceRequest: {exc}") from None
    logs: list[OtlpLog] = []
    for resource_logs in request.resource_logs:
        resource = _pb_attrs(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for r in scope_logs.log_records:
                attributes = _pb_attrs(r.attributes)
                logs.append(
                    OtlpLog(
                        r.trace_id.hex(),
                        r.span_id.hex(),
                        r.time_unix_nano or r.observed_time_unix_nano,
                        r.event_name or str(attributes.get("event.name", "")),
                        _pb_value(r.body) if r.HasField("body") else None,
                        attributes,
                        resource,
                    )
                )
    return logs


# --- OTLP JSON --------------------------------------------------------------------------


def _load_json(body: bytes) -> dict[str, Any]:
    try:
        data = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedOtlp(f"not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise MalformedOtlp("an OTLP JSON request is an object")
    return data


def _list(node: dict[str, Any], key: str) -> list[Any]:
    value = node.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedOtlp(f"{key} must be an array")
    return value


def _obj(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise MalformedOtlp(f"{what} must be an object")
    return value


def _int(value: Any, what: str) -> int:
    """int64 values are strings in OTLP JSON (proto3's mapping); numbers are accepted too."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise MalformedOtlp(f"{what} must be an integer")
    try:
        return int(value)
    except ValueError:
        raise MalformedOtlp(f"{what} must be an integer") from None


def _hex_id(value: Any, what: str) -> str:
    if value is None or value == "":
        return ""
    if not isinstance(value, str):
        raise MalformedOtlp(f"{what} must be a hex string")
    try:
        return bytes.fromhex(value).hex()
    except ValueError:
        raise MalformedOtlp(f"{what} must be a hex string") from None


def _json_value(value: Any) -> Any:
    node = _obj(value, "an attribute value")
    for kind, raw in node.items():
        if kind == "stringValue":
            return raw if isinstance(raw, str) else str(raw)
        if kind == "intValue":
            return _int(raw, "intValue")
        if kind in ("doubleValue", "boolValue"):
            return raw
        if kind == "arrayValue":
            return [_json_value(v) for v in _list(_obj(raw, kind), "values")]
        if kind == "kvlistValue":
            return _json_attrs(_list(_obj(raw, kind), "values"))
        if kind == "bytesValue" and isinstance(raw, str):
            try:
                return base64.b64decode(raw).hex()
            except ValueError:
                raise MalformedOtlp("bytesValue must be base64") from None
    return None


def _json_attrs(items: list[Any]) -> dict[str, Any]:
    attributes: dict[str, Any] = {}
    for item in items:
        kv = _obj(item, "an attribute")
        key = kv.get("key")
        if not isinstance(key, str):
            raise MalformedOtlp("an attribute needs a string key")
        attributes[key] = _json_value(kv.get("value"))
    return attributes


def _json_scopes(
    data: dict[str, Any], outer: str, inner: str, items: str
) -> Iterator[tuple[dict[str, Any], str, dict[str, Any]]]:
    """(resource attributes, scope name, item) for every span or log record in the request."""
    for node in _list(data, outer):
        group = _obj(node, outer)
        resource = _json_attrs(_list(_obj(group.get("resource"), "resource"), "attributes"))
        for scope_node in _list(group, inner):
            scoped = _obj(scope_node, inner)
            scope = _obj(scoped.get("scope"), "scope").get("name") or ""
            for item in _list(scoped, items):
                yield resource, str(scope), _obj(item, items)


def spans_from_json(body: bytes) -> list[OtlpSpan]:
    try:
        return [_json_span(*each) for each in _json_scopes(_load_json(body), *_SPAN_KEYS)]
    except RecursionError:
        raise MalformedOtlp("JSON nested too deeply") from None


_SPAN_KEYS = ("resourceSpans", "scopeSpans", "spans")
_LOG_KEYS = ("resourceLogs", "scopeLogs", "logRecords")


def _json_span(resource: dict[str, Any], scope: str, s: dict[str, Any]) -> OtlpSpan:
    status = _obj(s.get("status"), "status")
    events = tuple(
        SpanEvent(
            str(e.get("name") or ""),
            _int(e.get("timeUnixNano"), "timeUnixNano"),
            _json_attrs(_list(e, "attributes")),
        )
        for e in (_obj(x, "event") for x in _list(s, "events"))
    )
    return OtlpSpan(
        _hex_id(s.get("traceId"), "traceId"),
        _hex_id(s.get("spanId"), "spanId"),
        str(s.get("name") or ""),
        _int(s.get("startTimeUnixNano"), "startTimeUnixNano"),
        _int(s.get("endTimeUnixNano"), "endTimeUnixNano"),
        _json_attrs(_list(s, "attributes")),
        resource,
        scope,
        _int(status.get("code"), "status.code"),
        str(status.get("message") or ""),
        events,
    )


def logs_from_json(body: bytes) -> list[OtlpLog]:
    try:
        return [_json_log(res, r) for res, _, r in _json_scopes(_load_json(body), *_LOG_KEYS)]
    except RecursionError:
        raise MalformedOtlp("JSON nested too deeply") from None


def _json_log(resource: dict[str, Any], r: dict[str, Any]) -> OtlpLog:
    attributes = _json_attrs(_list(r, "attributes"))
    time_ns = _int(r.get("timeUnixNano"), "timeUnixNano") or _int(
        r.get("observedTimeUnixNano"), "observedTimeUnixNano"
    )
    return OtlpLog(
        _hex_id(r.get("traceId"), "traceId"),
        _hex_id(r.get("spanId"), "spanId"),
        time_ns,
        str(r.get("eventName") or attributes.get("event.name") or ""),
        _json_value(r["body"]) if r.get("body") is not None else None,
        attributes,
        resource,
    )


def keyvalues(attributes: dict[str, Any]) -> list[KeyValue]:
    """Plain attributes as OTLP KeyValues (tests and the benchmark build requests with it)."""
    return [KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def any_value(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list | tuple):
        out = AnyValue()
        out.array_value.values.extend(any_value(v) for v in value)
        return out
    if isinstance(value, dict):
        out = AnyValue()
        out.kvlist_value.values.extend(keyvalues(value))
        return out
    return AnyValue(string_value=str(value))
