"""The per-record path every source shares: decode, de-duplicate, count, sample to the store."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lookout.monitor.ingest.records import DecodeLimits, Record, decode_payload
from lookout.monitor.metrics.prices import PriceTable
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.metrics.windows import WindowedMetrics
from lookout.monitor.storage import Store


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
    first_ts: float | None = None  # earliest and latest accepted record time
    last_ts: float | None = None


class Pipeline:
    def __init__(
        self,
        windows: WindowedMetrics,
        prices: PriceTable,
        prom: IngestMetrics,
        store: Store,
        limits: DecodeLimits,
        *,
        sample_rate: float,
        dedupe_ids: int,
        rng: random.Random | None = None,
    ) -> None:
        self.windows = windows
        self._prices = prices
        self._prom = prom
        self._store = store
        self._limits = limits
        self._sample_rate = sample_rate
        self._recent = RecentIds(dedupe_ids)
        self._totals = prom.totals
        self._random = (rng or random.Random()).random
        # Set by the daemon when detectors run: sees every counted record (it samples itself),
        # with the id it was stored under, if it was.
        self.detector: Callable[[Record, float, str | None, float], None] | None = None

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
        messages = self._totals.messages
        messages[source] = messages.get(source, 0) + 1
        decoded = decode_payload(payload, topic, now, self._limits)
        rejected = []
        for rejection in decoded.rejections:
            self._prom.rejected.labels(rejection.reason.value).inc(rejection.count)
            self._store.put_rejected(rejection, source, now)
            rejected.append((rejection.reason.value, rejection.detail))
        accepted = duplicates = 0
        for record in decoded.records:
            if self.process_record(record, record.ts if event_time else now):
                accepted += 1
            else:
                duplicates += 1
        if not (event_time and decoded.records):
            return IngestResult(accepted, duplicates, rejected)
        stamps = [r.ts for r in decoded.records]
        return IngestResult(accepted, duplicates, rejected, min(stamps), max(stamps))

    def process_record(self, record: Record, now: float) -> bool:
        """Count one record; False when it is a redelivery of one already counted."""
        if record.id is not None and self._recent.seen(record.id):
            self._prom.duplicates.inc()
            return False
        key = self.windows.labels_for(record.app, record.model)
        error = record.status == "error"
        latency_ms = record.latency_ms
        input_tokens = record.input_tokens
        output_tokens = record.output_tokens
        cost = 0.0
        if input_tokens or output_tokens:
            cost = self._prices.cost(record.model, input_tokens, output_tokens)
        self.windows.observe(
            key, now, error, latency_ms, record.ttft_ms, input_tokens, output_tokens, cost
        )
        totals = self._totals.get(key)
        if error:
            totals.errors += 1
        else:
            totals.ok += 1
        if latency_ms is not None:
            totals.observe_latency(latency_ms / 1000.0)
        if input_tokens:
            totals.input_tokens += input_tokens
        if output_tokens:
            totals.output_tokens += output_tokens
        totals.cost += cost
        stored_id = None
        if error or self._random() < self._sample_rate:
            stored_id = self._store.put_record(record, cost)
        if self.detector is not None:
            self.detector(record, now, stored_id, cost)
        return True
