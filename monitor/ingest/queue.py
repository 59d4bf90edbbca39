"""The bounded queue between the network and processing, and the task that drains it.

Sources offer messages without awaiting; when the queue reaches its capacity the source is told
to pause reading its socket (back-pressure reaches the broker through TCP and, at QoS 1,
through unacknowledged messages), and to resume once the queue is half empty. Processing itself
waits while the store's uncommitted rows are over their limit, so a slow disk fills this queue
and pauses the socket rather than dropping rows. A message is acknowledged to the broker only
once everything it changed is committed (the store runs the ack after its commit group's
transaction), so a crash costs a redelivery, never a loss, at QoS 1.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, Literal, NamedTuple

import structlog

from lookout.clock import Clock
from lookout.monitor.ingest.pipeline import Pipeline
from lookout.monitor.metrics.prom import IngestMetrics

log = structlog.get_logger(__name__)

_CHUNK = 256
_CHUNK_RECORDS = 1024


class Inbound(NamedTuple):
    topic: str
    payload: bytes
    ack: Callable[[], None] | None


class IngestQueue:
    def __init__(
        self, capacity: int, prom: IngestMetrics, capacity_bytes: int = 16 * 1024 * 1024
    ) -> None:
        self.capacity = capacity
        self.capacity_bytes = capacity_bytes
        self.queued_bytes = 0
        self._items: deque[Inbound] = deque()
        self._prom = prom
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._progress = asyncio.Event()
        self._pause: Callable[[], None] | None = None
        self._resume: Callable[[], None] | None = None
        self.paused = False
        self.processed = 0  # messages processed since start

    def set_flow_control(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        self._pause, self._resume = pause, resume

    def __len__(self) -> int:
        return len(self._items)

    def offer(self, item: Inbound) -> None:
        items = self._items
        # Past twice the capacity (a reader may deliver a few messages after a pause), drop.
        if len(items) >= 2 * self.capacity or self.queued_bytes >= 2 * self.capacity_bytes:
            # Not acknowledged: at QoS 1 the broker redelivers it after reconnecting.
            self._prom.dropped.labels("ingest").inc()
            return
        items.append(item)
        self.queued_bytes += len(item.payload)
        self._idle.clear()
        self._wake.set()
        if not self.paused and self._pause is not None and self._full():
            self.paused = True
            self._prom.paused.inc()
            self._pause()

    def _full(self) -> bool:
        return len(self._items) >= self.capacity or self.queued_bytes >= self.capacity_bytes

    async def wait_idle(self) -> None:
        """Until every offered message has been processed."""
        await self._idle.wait()

    def wait_progress(self) -> Coroutine[Any, Any, Literal[True]]:
        """Until the next chunk of messages has been processed.

        Not a coroutine function on purpose: the event is taken when this is called, so a
        chunk finished before the caller gets to await (say, under a timeout) still counts.
        """
        return self._progress.wait()

    def _signal_progress(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def run(self, pipeline: Pipeline, clock: Clock) -> None:
        """Process messages until cancelled."""
        items = self._items
        prom = self._prom
        while True:
            await self._wake.wait()
            self._wake.clear()
            while items:
                if not pipeline.has_room():
                    await pipeline.wait_room()
                now = clock.now()
                chunk = records = 0
                # A chunk ends after _CHUNK messages or _CHUNK_RECORDS records (batches), so
                # the store's flusher, the network and the API get the loop every few ms.
                while items and chunk < _CHUNK and records < _CHUNK_RECORDS:
                    item = items.popleft()
                    self.queued_bytes -= len(item.payload)
                    chunk += 1
                    try:
                        result = pipeline.process_payload(item.payload, item.topic, "mqtt", now)
                        records += result.accepted + result.duplicates + len(result.rejected)
                    except Exception:
                        # A bug must not stop ingest. No payload in logs: prompts may hold PII.
                        log.exception("ingest_failed", topic=item.topic, size=len(item.payload))
                    if item.ack is not None:
                        pipeline.after_commit(item.ack)
                self.processed += chunk
                prom.queue_depth.set(len(items))
                self._signal_progress()
                half_empty = (
                    len(items) <= self.capacity // 2
                    and self.queued_bytes <= self.capacity_bytes // 2
                )
                if self.paused and half_empty and self._resume is not None:
                    self.paused = False
                    self._resume()
                if items:
                    await asyncio.sleep(0)  # let the network and the API in between chunks
            self._idle.set()
