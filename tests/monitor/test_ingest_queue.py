"""The ingest queue pauses its source when full, resumes when drained, and acks after work."""

from __future__ import annotations

import asyncio
import random
from functools import partial
from typing import cast

from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.monitor.ingest.pipeline import Pipeline
from lookout.monitor.ingest.queue import Inbound, IngestQueue
from lookout.monitor.ingest.records import DecodeLimits
from lookout.monitor.metrics.prices import PriceTable
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.metrics.windows import WindowedMetrics
from lookout.monitor.storage import RollupPoint, Store


class ListStore:
    """Records what the pipeline hands to a store."""

    def __init__(self) -> None:
        self.records: list[str] = []

    def put_record(self, record: object, cost: float) -> None:
        self.records.append(record.id)  # type: ignore[attr-defined]

    def put_rejected(self, rejection: object, source: str, at: float) -> None:
        pass

    def put_rollups(self, points: list[RollupPoint]) -> None:
        pass


def make_pipeline(prom: IngestMetrics) -> tuple[Pipeline, ListStore]:
    store = ListStore()
    pipeline = Pipeline(
        WindowedMetrics(),
        PriceTable({}),
        prom,
        cast(Store, store),
        DecodeLimits(),
        sample_rate=1.0,
        dedupe_ids=100,
        rng=random.Random(1),
    )
    return pipeline, store


async def test_full_queue_pauses_source_and_drained_queue_resumes_it() -> None:
    prom = IngestMetrics(CollectorRegistry())
    queue = IngestQueue(capacity=4, prom=prom)
    events: list[str] = []
    queue.set_flow_control(lambda: events.append("pause"), lambda: events.append("resume"))
    acked: list[int] = []
    for i in range(6):
        queue.offer(Inbound("llm/records/a", b'{"id": "r%d"}' % i, partial(acked.append, i)))
    assert events == ["pause"] and queue.paused
    pipeline, store = make_pipeline(prom)
    runner = asyncio.create_task(queue.run(pipeline, FakeClock()))
    await asyncio.wait_for(queue.wait_idle(), 5)
    runner.cancel()
    assert events == ["pause", "resume"]
    assert acked == list(range(6))
    assert store.records == [f"r{i}" for i in range(6)]


async def test_past_the_hard_limit_messages_are_dropped_unacked_and_counted() -> None:
    registry = CollectorRegistry()
    prom = IngestMetrics(registry)
    queue = IngestQueue(capacity=2, prom=prom)
    acked: list[int] = []
    for i in range(7):
        queue.offer(Inbound("t", b"{}", partial(acked.append, i)))
    assert len(queue) == 4
    assert registry.get_sample_value("lookout_dropped_total", {"queue": "ingest"}) == 3
    assert acked == []


async def test_queue_is_bounded_in_bytes_too() -> None:
    prom = IngestMetrics(CollectorRegistry())
    queue = IngestQueue(capacity=1000, prom=prom, capacity_bytes=1024 * 1024)
    events: list[str] = []
    queue.set_flow_control(lambda: events.append("pause"), lambda: events.append("resume"))
    big = b"[" + b"{}," * 100_000 + b"{}]"  # ~300 KB: a large batch
    for _ in range(4):
        queue.offer(Inbound("llm/records/a", big, None))
    assert events == ["pause"] and len(queue) == 4
    pipeline, _store = make_pipeline(prom)
    runner = asyncio.create_task(queue.run(pipeline, FakeClock()))
    await asyncio.wait_for(queue.wait_idle(), 30)
    runner.cancel()
    assert events == ["pause", "resume"]
    assert queue.queued_bytes == 0
