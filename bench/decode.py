"""Decode cost of one ~1 KB record: stdlib json, orjson, msgspec (typed) and pydantic.

The four parsers do the same job: parse, check types and non-negative numbers. The last line
is lookout's whole decode step (typed msgspec parse plus alias resolution, limits and the
normalised record), for scale. Prints microseconds per record and the ratio to the fastest.

    .venv/bin/python bench/decode.py
"""

from __future__ import annotations

import json
import timeit
from collections.abc import Callable
from typing import Annotated, Any

import orjson
from pydantic import BaseModel, ConfigDict, Field

from lookout.monitor.ingest.records import DecodeLimits, _one_decoder, decode_payload

RECORD = {
    "id": "3f0c6f7e-5d8b-4b8e-9a51-0c2f5e1d9a77",
    "ts": 1732800000.25,
    "app": "support-bot",
    "model": "gpt-4o-mini",
    "provider": "openai",
    "prompt": "Where is my order? I ordered a pair of running shoes last Tuesday " * 6,
    "response": "Your order shipped yesterday and should arrive within three days. " * 6,
    "latency_ms": 812.4,
    "ttft_ms": 180.2,
    "input_tokens": 152,
    "output_tokens": 88,
    "status": "ok",
    "user_id": "u-1234",
    "session_id": "s-5678",
    "metadata": {"tenant": "acme", "region": "eu-west-1"},
}
PAYLOAD = json.dumps(RECORD).encode()


def check(d: dict[str, Any]) -> dict[str, Any]:
    """The validation the dict-based decoders must add by hand."""
    for key in ("latency_ms", "ttft_ms"):
        v = d.get(key)
        if v is not None and (not isinstance(v, int | float) or isinstance(v, bool) or v < 0):
            raise ValueError(key)
    for key in ("input_tokens", "output_tokens"):
        v = d.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise ValueError(key)
    for key in ("app", "model", "prompt", "response", "id"):
        v = d.get(key)
        if v is not None and not isinstance(v, str):
            raise ValueError(key)
    d.setdefault("model", d.get("gen_ai.request.model", "unknown"))
    return d


class PydanticRecord(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    id: str | None = None
    ts: float | str | None = None
    app: str | None = None
    model: str | None = Field(default=None, alias="model")
    provider: str | None = None
    prompt: str | None = None
    response: str | None = None
    latency_ms: Annotated[float, Field(ge=0)] | None = None
    ttft_ms: Annotated[float, Field(ge=0)] | None = None
    input_tokens: Annotated[int, Field(ge=0)] | None = None
    output_tokens: Annotated[int, Field(ge=0)] | None = None
    status: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    metadata: dict[str, Any] | None = None


LIMITS = DecodeLimits()
CANDIDATES: dict[str, Callable[[], object]] = {
    "stdlib json + checks": lambda: check(json.loads(PAYLOAD)),
    "orjson + checks": lambda: check(orjson.loads(PAYLOAD)),
    "pydantic model_validate_json": lambda: PydanticRecord.model_validate_json(PAYLOAD),
    "msgspec typed Struct": lambda: _one_decoder.decode(PAYLOAD),
}
FULL: tuple[str, Callable[[], object]] = (
    "lookout decode_payload (msgspec + normalize)",
    lambda: decode_payload(PAYLOAD, None, 0.0, LIMITS),
)


def main() -> None:
    print(f"payload: {len(PAYLOAD)} bytes, one record")
    results = {}
    for name, fn in [*CANDIDATES.items(), FULL]:
        fn()
        n = 20_000
        best = min(timeit.repeat(fn, number=n, repeat=5)) / n * 1e6
        results[name] = best
    fastest = min(results.values())
    for name, us in sorted(results.items(), key=lambda kv: kv[1]):
        print(f"{name:46s} {us:6.2f} us/record  {us / fastest:4.2f}x")


if __name__ == "__main__":
    main()
