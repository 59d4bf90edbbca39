"""The wire format's optional tool and retrieval fields: what the LLM app did for a request
beside the model call (docs/wire-format.md)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

DurationMs = Annotated[float, msgspec.Meta(ge=0, le=86_400_000.0)]  # as records': up to a day
Count = Annotated[int, msgspec.Meta(ge=0, le=1_000_000_000)]
ShortStr = Annotated[str, msgspec.Meta(max_length=256)]


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """One tool the LLM app called for the request."""

    name: ShortStr
    latency_ms: DurationMs | None = None
    status: Literal["ok", "error"] = "ok"


class Retrieval(msgspec.Struct, frozen=True, gc=False):
    """The request's retrieval step (RAG)."""

    latency_ms: DurationMs | None = None
    documents: Count | None = None  # how many came back; 0 is an empty retrieval
    status: Literal["ok", "error"] = "ok"


ToolCalls = Annotated[list[ToolCall], msgspec.Meta(max_length=256)]
