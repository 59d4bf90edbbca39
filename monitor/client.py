"""For apps: publish one record per LLM call to lookout over MQTT, without blocking the app.

    from lookout.monitor.client import RecordPublisher, LookoutCallbackHandler
    publisher = RecordPublisher(app="support-bot")          # mqtt://127.0.0.1:1883
    llm.invoke("hi", config={"callbacks": [LookoutCallbackHandler(publisher)]})

Records go into a bounded in-memory queue; a background thread publishes them in batches
(JSON arrays) at QoS 1. When the queue is full a record is dropped and counted in
`publisher.dropped`: the app is never slowed down by its monitoring.
"""

from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any
from urllib.parse import urlparse
from uuid import UUID

import paho.mqtt.client as paho
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult
from paho.mqtt.enums import CallbackAPIVersion

_STOP = object()


class RecordPublisher:
    def __init__(
        self,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        app: str = "default",
        topic_prefix: str = "llm/records",
        username: str | None = None,
        password: str | None = None,
        client_id: str | None = None,
        batch_size: int = 50,
        flush_interval_s: float = 0.2,
        max_queued: int = 10_000,
        qos: int = 1,
    ) -> None:
        parsed = urlparse(url)
        self.topic = f"{topic_prefix}/{app}"
        self.app = app
        self.dropped = 0
        self.published = 0
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._qos = qos
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queued)
        # Message ids handed to paho, and those the broker acknowledged (QoS 1) or that were
        # written (QoS 0): close() waits until the first are all in the second. Paho's
        # network thread adds to `_acked`, the sender thread prunes both (set operations are
        # atomic under the GIL; paho may call back before publish() has returned).
        self._sent: set[int] = set()
        self._acked: set[int] = set()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"lookout-pub-{uuid.uuid4().hex[:12]}",
        )
        self._client.max_queued_messages_set(1000)
        self._client.on_publish = self._on_publish
        if username is not None:
            self._client.username_pw_set(username, password)
        if parsed.scheme in ("mqtts", "ssl"):
            self._client.tls_set()
        # connect_async + loop_start: the app starts even while the broker is down.
        self._client.connect_async(parsed.hostname or "127.0.0.1", parsed.port or 1883)
        self._client.loop_start()
        self._thread = threading.Thread(target=self._sender, name="lookout-publisher", daemon=True)
        self._thread.start()

    def publish_record(self, record: dict[str, Any]) -> bool:
        """Queue one record (a wire-format dict); False if dropped because the queue is full."""
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _sender(self) -> None:
        batch: list[object] = []
        deadline = time.monotonic() + self._flush_interval_s
        while True:
            timeout = max(deadline - time.monotonic(), 0.0)
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._send(batch)
                return
            if item is not None:
                batch.append(item)
            if len(batch) >= self._batch_size or time.monotonic() >= deadline:
                self._send(batch)
                batch = []
                deadline = time.monotonic() + self._flush_interval_s

    def _send(self, batch: list[object]) -> None:
        if not batch:
            return
        payload = json.dumps(batch, default=str, ensure_ascii=False).encode()
        info = self._client.publish(self.topic, payload, qos=self._qos)
        if info.rc in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            # NO_CONN still queues the message in paho for when the link is back.
            self.published += len(batch)
            self._sent.add(info.mid)
            done = set(self._acked)
            self._sent -= done
            self._acked -= done
        else:
            self.dropped += len(batch)

    def _on_publish(self, client: Any, userdata: Any, mid: int, *_: Any) -> None:
        self._acked.add(mid)

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish what is queued, wait for the broker's acks (up to `timeout_s`), disconnect."""
        with contextlib.suppress(queue.Full):
            self._queue.put(_STOP, timeout=timeout_s)
        self._thread.join(timeout_s)
        # Until the broker has them: batches published before the connection was up sit in
        # paho's queue, and nothing is in the socket's buffer to wait for.
        end = time.monotonic() + timeout_s
        while time.monotonic() < end and not self._sent <= set(self._acked):
            time.sleep(0.01)
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> RecordPublisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        if record is None:
            return None
        record["latency_ms"] = (time.monotonic() - record.pop("_t0")) * 1000.0
        return record


def _role(message: BaseMessage) -> str:
    return {"human": "user", "ai": "assistant"}.get(message.type, message.type)


def publish_record(
    publisher: RecordPublisher,
    *,
    prompt: str | None = None,
    response: str | None = None,
    model: str | None = None,
    latency_ms: float | None = None,
    ttft_ms: float | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    error: str | None = None,
    **extra: Any,
) -> bool:
    """Queue one record for an LLM call made without LangChain; never blocks."""
    record: dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "ts": time.time(),
        "app": publisher.app,
        "prompt": prompt,
        "response": response,
        "model": model,
        "latency_ms": latency_ms,
        "ttft_ms": ttft_ms,
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "error": error,
        **extra,
    }
    return publisher.publish_record({k: v for k, v in record.items() if v is not None})
