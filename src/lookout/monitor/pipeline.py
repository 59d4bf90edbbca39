"""The per-record path every source shares: decode, de-duplicate, count, sample to the store."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

from lookout.monitor.prom import IngestMetrics
from lookout.monitor.records import DecodeLimits, Record, decode_payload
from lookout.monitor.store import Store
from lookout.monitor.windows import WindowedMetrics


class RecentIds:
    """The last `capacity` record ids, to ignore redeliveries; O(1) per id, bounded memory."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._order: deque[str] = deque()
        self._ids: set[str] = set()

    def seen(self, record_id: str) -> bool:
        """True if `record_id` was seen recently; remembers it otherwise."""
        if self._capacity == 0:
            return False
        if record_id in self._ids:
            return True
        if len(self._order) >= self._capacity:
            self._ids.discard(self._order.popleft())
        self._order.append(record_id)
        self._ids.add(record_id)
        return False


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    rejected: list[tuple[str, str]]  # (reason, detail)


class Pipeline:
    def __init__(
        self,
        windows: WindowedMetrics,
        prom: IngestMetrics,
        store: Store,
        limits: DecodeLimits,
        *,
        sample_rate: float,
        dedupe_ids: int,
        rng: random.Random | None = None,
    ) -> None:
        self.windows = windows
        self._prom = prom
        self._store = store
        self._limits = limits
        self._sample_rate = sample_rate
        self._recent = RecentIds(dedupe_ids)
        self._random = (rng or random.Random()).random

    def process_payload(
        self,
        payload: bytes,
        topic: str | None,
        source: str,
        now: float,
        *,
        event_time: bool = False,
    ) -> IngestResult:
        """Process one message. With `event_time`, windows follow each record's own ts (replay)."""
        self._prom.messages.labels(source).inc()
        decoded = decode_payload(payload, topic, now, self._limits)
        rejected = []
        for rejection in decoded.rejections:
            self._prom.rejected.labels(rejection.reason.value).inc()
            self._store.put_rejected(rejection, source, now)
            rejected.append((rejection.reason.value, rejection.detail))
        accepted = duplicates = 0
        for record in decoded.records:
            if self.process_record(record, record.ts if event_time else now):
                accepted += 1
            else:
                duplicates += 1
        return IngestResult(accepted, duplicates, rejected)

    def process_record(self, record: Record, now: float) -> bool:
        """Count one record; False when it is a redelivery of one already counted."""
        if record.id_given and self._recent.seen(record.id):
            self._prom.duplicates.inc()
            return False
        key = self.windows.labels_for(record.app, record.model)
        error = record.status == "error"
        cost = self.windows.observe(
            key,
            now,
            error=error,
            latency_ms=record.latency_ms,
            ttft_ms=record.ttft_ms,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
        )
        children = self._prom.children(*key)
        (children.errors if error else children.ok).inc()
        if record.latency_ms is not None:
            children.latency.observe(record.latency_ms / 1000.0)
        if record.input_tokens:
            children.input_tokens.inc(record.input_tokens)
        if record.output_tokens:
            children.output_tokens.inc(record.output_tokens)
        if cost:
            children.cost.inc(cost)
        if error or self._random() < self._sample_rate:
            self._store.put_record(record, cost)
        return True
