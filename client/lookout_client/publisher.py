"""Publish one record per LLM call to lookout over MQTT, without blocking the app.

Records (and users' feedback on them, on their own topic) go into a bounded in-memory queue; a
background thread publishes them in batches (JSON arrays, one per topic) at QoS 1. When the
queue is full a record is dropped and counted in `publisher.dropped`: the app is never slowed
down by its monitoring.

A publisher flushes on exit: `close()`, the `with` block's end, or, if neither ran, when the
interpreter exits (atexit), so a short script's last records are not lost.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import queue
import threading
import time
import uuid
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

_STOP = object()


class RecordPublisher:
    def __init__(
        self,
        url: str = "mqtt://127.0.0.1:1883",
        *,
        app: str = "default",
        topic_prefix: str = "llm/records",
        feedback_prefix: str = "llm/feedback",
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
        self.feedback_topic = f"{feedback_prefix}/{app}"
        self.app = app
        self.dropped = 0
        self.published = 0
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._qos = qos
        # (topic, body) pairs, or _STOP.
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
        self._closed = False
        # At interpreter exit, daemon threads still run, so the last batch can go out.
        atexit.register(self.close)

    def publish_record(self, record: dict[str, Any]) -> bool:
        """Queue one record (a wire-format dict); False if dropped because the queue is full."""
        return self._put(self.topic, record)

    def feedback(
        self,
        run_id: str | uuid.UUID,
        key: str,
        score: float,
        *,
        value: str | None = None,
        comment: str | None = None,
        user_id: str | None = None,
    ) -> bool:
        """Queue a user's feedback on the record published under `run_id` (a LangChain run's
        id is its record's id); False if dropped because the queue is full. Never blocks."""
        event: dict[str, Any] = {
            "record_id": str(run_id),
            "app": self.app,
            "key": key,
            "score": score,
            "value": value,
            "comment": comment,
            "user_id": user_id,
            "ts": time.time(),
        }
        return self._put(self.feedback_topic, {k: v for k, v in event.items() if v is not None})

    def _put(self, topic: str, body: dict[str, Any]) -> bool:
        try:
            self._queue.put_nowait((topic, body))
        except queue.Full:
            self.dropped += 1
            return False
        return True

    def _sender(self) -> None:
        batches: dict[str, list[object]] = {}
        deadline = time.monotonic() + self._flush_interval_s
        while True:
            timeout = max(deadline - time.monotonic(), 0.0)
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._send_all(batches)
                return
            if isinstance(item, tuple):
                topic, body = item
                batches.setdefault(topic, []).append(body)
            full = any(len(b) >= self._batch_size for b in batches.values())
            if full or time.monotonic() >= deadline:
                self._send_all(batches)
                batches = {}
                deadline = time.monotonic() + self._flush_interval_s

    def _send_all(self, batches: dict[str, list[object]]) -> None:
        for topic, batch in batches.items():
            self._send(topic, batch)

    def _send(self, topic: str, batch: list[object]) -> None:
        if not batch:
            return
        payload = json.dumps(batch, default=str, ensure_ascii=False).encode()
        info = self._client.publish(topic, payload, qos=self._qos)
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
        """Publish what is queued, wait for the broker's acks (up to `timeout_s`), disconnect.
        Called at exit if the app did not; once is enough."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
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
