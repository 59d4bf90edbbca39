"""LangChain's callbacks turned into lookout records (the `langchain` extra).

Tool and retriever runs are attached to the next LLM call that ends under the same root run
(an agent's or a chain's): the call that reads their results. A retriever before the model in
a RAG chain, or the tools an agent called between two model turns, land on the record of the
call after them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Any
from uuid import UUID

try:
    from langchain_core.callbacks import BaseCallbackHandler
    from langchain_core.messages import BaseMessage
    from langchain_core.outputs import LLMResult
except ModuleNotFoundError as missing:  # the app installed the client without the extra
    raise ImportError(
        "LookoutCallbackHandler needs langchain-core: pip install 'lookout-llm-client[langchain]'"
    ) from missing

from lookout_client.publisher import RecordPublisher


def _model_name(serialized: dict[str, Any] | None, kwargs: dict[str, Any]) -> str | None:
    metadata = kwargs.get("metadata") or {}
    params = kwargs.get("invocation_params") or {}
    for value in (
        metadata.get("ls_model_name"),
        params.get("model"),
        params.get("model_name"),
        (serialized or {}).get("kwargs", {}).get("model"),
        (serialized or {}).get("kwargs", {}).get("model_name"),
    ):
        if isinstance(value, str) and value:
            return value
    return None


def _message_text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    return "\n".join(p if isinstance(p, str) else str(p.get("text", "")) for p in content if p)


class LookoutCallbackHandler(BaseCallbackHandler):
    """Turns each LLM call seen by LangChain into a lookout record."""

    def __init__(self, publisher: RecordPublisher, *, max_in_flight: int = 10_000) -> None:
        self._publisher = publisher
        self._runs: OrderedDict[UUID, dict[str, Any]] = OrderedDict()
        self._max = max_in_flight
        self._lock = threading.Lock()
        self._parents: OrderedDict[UUID, UUID | None] = OrderedDict()
        self._steps: OrderedDict[UUID, tuple[UUID, str | None, float]] = OrderedDict()
        # root run -> the tool calls and retrieval waiting for the next LLM call's record
        self._pending: OrderedDict[UUID, dict[str, Any]] = OrderedDict()

    def _start(
        self,
        run_id: UUID,
        prompt: str | None,
        messages: list[dict[str, str]] | None,
        serialized: dict[str, Any],
        kwargs: dict[str, Any],
    ) -> None:
        record: dict[str, Any] = {
            "id": str(run_id),
            "ts": time.time(),
            "app": self._publisher.app,
            "_t0": time.monotonic(),
            "_root": self._enter(run_id, kwargs.get("parent_run_id")),
        }
        if messages is not None:
            record["messages"] = messages
        elif prompt is not None:
            record["prompt"] = prompt
        model = _model_name(serialized, kwargs)
        if model:
            record["model"] = model
        provider = (kwargs.get("metadata") or {}).get("ls_provider")
        if isinstance(provider, str):
            record["provider"] = provider
        with self._lock:
            self._runs[run_id] = record
            while len(self._runs) > self._max:
                self._runs.popitem(last=False)

    def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._start(run_id, prompts[-1] if prompts else None, None, serialized, kwargs)

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        turns = messages[-1] if messages else []
        wire = [{"role": _role(m), "content": _message_text(m)} for m in turns]
        self._start(run_id, None, wire, serialized, kwargs)

    def on_llm_new_token(self, token: Any, *, run_id: UUID, **kwargs: Any) -> None:
        with self._lock:
            record = self._runs.get(run_id)
            if record is not None and "ttft_ms" not in record:
                record["ttft_ms"] = (time.monotonic() - record["_t0"]) * 1000.0

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        record = self._finish(run_id)
        if record is None:
            return
        generations = response.generations[0] if response.generations else []
        if generations:
            gen = generations[0]
            message = getattr(gen, "message", None)
            record["response"] = _message_text(message) if message is not None else gen.text
            usage = getattr(message, "usage_metadata", None) if message is not None else None
            if usage:
                record["input_tokens"] = usage.get("input_tokens")
                record["output_tokens"] = usage.get("output_tokens")
            if message is not None and "model" not in record:
                name = (message.response_metadata or {}).get("model_name")
                if isinstance(name, str):
                    record["model"] = name
        usage = (response.llm_output or {}).get("token_usage") or {}
        if "input_tokens" not in record and usage:
            record["input_tokens"] = usage.get("prompt_tokens")
            record["output_tokens"] = usage.get("completion_tokens")
        record["status"] = "ok"
        self._publisher.publish_record({k: v for k, v in record.items() if v is not None})

    # --- the steps around LLM calls: chains, tools, retrievers -------------------------

    def _enter(self, run_id: UUID, parent_run_id: UUID | None) -> UUID:
        """Remember a run's parent; its root run (bounded: the oldest are forgotten)."""
        with self._lock:
            self._parents[run_id] = parent_run_id
            while len(self._parents) > self._max:
                self._parents.popitem(last=False)
            root = run_id
            for _ in range(100):  # nesting is shallow; a cycle would be a LangChain bug
                parent = self._parents.get(root)
                if parent is None:
                    break
                root = parent
            return root

    def on_chain_start(
        self, serialized: dict[str, Any], inputs: Any, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._enter(run_id, kwargs.get("parent_run_id"))

    def on_chain_end(self, outputs: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._leave(run_id)

    def on_chain_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._leave(run_id)

    def _leave(self, run_id: UUID) -> None:
        with self._lock:
            if self._parents.pop(run_id, None) is None:
                self._pending.pop(run_id, None)  # a root ended: what no LLM call took goes

    def on_tool_start(
        self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        name = (serialized or {}).get("name") or kwargs.get("name")
        self._step_start(run_id, kwargs.get("parent_run_id"), str(name or "tool"))

    def on_retriever_start(
        self, serialized: dict[str, Any], query: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        self._step_start(run_id, kwargs.get("parent_run_id"), None)

    def _step_start(self, run_id: UUID, parent: UUID | None, tool: str | None) -> None:
        root = self._enter(run_id, parent)
        with self._lock:
            self._steps[run_id] = (root, tool, time.monotonic())
            while len(self._steps) > self._max:
                self._steps.popitem(last=False)

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._step_end(run_id, "ok", None)

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._step_end(run_id, "error", None)

    def on_retriever_end(self, documents: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self._step_end(run_id, "ok", len(documents))

    def on_retriever_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self._step_end(run_id, "error", None)

    def _step_end(self, run_id: UUID, status: str, documents: int | None) -> None:
        with self._lock:
            step = self._steps.pop(run_id, None)
            self._parents.pop(run_id, None)
            if step is None:
                return
            root, tool, t0 = step
            latency_ms = (time.monotonic() - t0) * 1000.0
            pending = self._pending.setdefault(root, {})
            while len(self._pending) > self._max:
                self._pending.popitem(last=False)
            if tool is not None:
                call = {"name": tool, "latency_ms": latency_ms, "status": status}
                pending.setdefault("tools", []).append(call)
                return
            retrieval = pending.setdefault("retrieval", {"latency_ms": 0.0, "status": "ok"})
            retrieval["latency_ms"] += latency_ms  # several retrievals: one step, summed
            if status == "error":
                retrieval["status"] = "error"
            if documents is not None:
                retrieval["documents"] = retrieval.get("documents", 0) + documents

    def _take_steps(self, record: dict[str, Any]) -> None:
        """The tool calls and retrieval since the last LLM call under the same root."""
        with self._lock:
            pending = self._pending.pop(record.pop("_root"), None)
        if pending:
            record.update(pending)

    def feedback(self, run_id: UUID | str, key: str, score: float, **fields: Any) -> bool:
        """A user's feedback on the LLM call of `run_id` (the id of the record published for
        it): `value`, `comment`, `user_id` as `RecordPublisher.feedback` takes them."""
        return self._publisher.feedback(str(run_id), key, score, **fields)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        record = self._finish(run_id)
        if record is None:
            return
        record["status"] = "error"
        record["error"] = f"{type(error).__name__}: {error}"[:2000]
        self._publisher.publish_record(record)

    def _finish(self, run_id: UUID) -> dict[str, Any] | None:
        with self._lock:
            record = self._runs.pop(run_id, None)
            self._parents.pop(run_id, None)
        if record is None:
            return None
        record["latency_ms"] = (time.monotonic() - record.pop("_t0")) * 1000.0
        self._take_steps(record)
        return record


def _role(message: BaseMessage) -> str:
    return {"human": "user", "ai": "assistant"}.get(message.type, message.type)
