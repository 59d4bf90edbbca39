"""The ingest queue pauses its source when full, resumes when drained, and acks after work."""

from __future__ import annotations

import asyncio
import random
from functools import partial
from pathlib import Path

from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.monitor.config import StoreConfig
from lookout.monitor.ingest.pipeline import Pipeline
from lookout.monitor.ingest.queue import Inbound, IngestQueue
from lookout.monitor.ingest.records import DecodeLimits
from lookout.monitor.metrics.prices import PriceTable
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.metrics.windows import WindowedMetrics
from lookout.monitor.storage import Store, open_store
from tests.stores import StoreDb


def make_pipeline(
    prom: IngestMetrics, store_url: str, queue_size: int = 50_000, sample_rate: float = 1.0
) -> tuple[Pipeline, Store]:
    cfg = StoreConfig(url=store_url, queue_size=queue_size)
    store = open_store(cfg, prom, FakeClock())
    pipeline = Pipeline(
        WindowedMetrics(),
        PriceTable({}),
        prom,
        store,
        DecodeLimits(),
        sample_rate=sample_rate,
        dedupe_ids=100,
        rng=random.Random(1),
    )
    return pipeline, store


async def test_full_queue_pauses_source_and_drained_queue_resumes_it(store_db: StoreDb) -> None:
    prom = IngestMetrics(CollectorRegistry())
    queue = IngestQueue(capacity=4, prom=prom)
    events: list[str] = []
    queue.set_flow_control(lambda: events.append("pause"), lambda: events.append("resume"))
    acked: list[int] = []
    for i in range(6):
        queue.offer(Inbound("llm/records/a", b'{"id": "r%d"}' % i, partial(acked.append, i)))
    assert events == ["pause"] and queue.paused
    pipeline, store = make_pipeline(prom, store_db.url)
    async with store:
        runner = asyncio.create_task(queue.run(pipeline, FakeClock()))
        await asyncio.wait_for(queue.wait_idle(), 5)
        runner.cancel()
        assert events == ["pause", "resume"]
        assert acked == []  # processed, not yet committed: not acknowledged
        await store.flush()
        assert acked == list(range(6))  # acknowledged once committed, in order
        for i in range(6):
            assert await store.get_record(f"r{i}") is not None


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


async def test_queue_is_bounded_in_bytes_too(tmp_path: Path) -> None:
    prom = IngestMetrics(CollectorRegistry())
    queue = IngestQueue(capacity=1000, prom=prom, capacity_bytes=1024 * 1024)
    events: list[str] = []
    queue.set_flow_control(lambda: events.append("pause"), lambda: events.append("resume"))
    big = b"[" + b"{}," * 100_000 + b"{}]"  # ~300 KB: a large batch
    for _ in range(4):
        queue.offer(Inbound("llm/records/a", big, None))
    assert events == ["pause"] and len(queue) == 4
    pipeline, store = make_pipeline(
        prom, f"sqlite:///{tmp_path}/q.db", sample_rate=0.0
    )  # counted, not stored
    async with store:
        runner = asyncio.create_task(queue.run(pipeline, FakeClock()))
        await asyncio.wait_for(queue.wait_idle(), 30)
        runner.cancel()
    assert events == ["pause", "resume"]
    assert queue.queued_bytes == 0


async def test_a_store_behind_on_commits_pauses_processing_and_so_the_source(
    store_db: StoreDb,
) -> None:
    prom = IngestMetrics(CollectorRegistry())
    queue = IngestQueue(capacity=4, prom=prom)
    events: list[str] = []
    queue.set_flow_control(lambda: events.append("pause"), lambda: events.append("resume"))
    pipeline, store = make_pipeline(prom, store_db.url, queue_size=100)
    # Not opened yet: nothing commits, as with a disk that has stalled.
    filler = b"[" + b",".join(b'{"id": "f%d"}' % i for i in range(100)) + b"]"
    pipeline.process_payload(filler, "llm/records/a", "mqtt", 0.0)
    assert not store.has_room()
    runner = asyncio.create_task(queue.run(pipeline, FakeClock()))
    acked: list[int] = []
    for i in range(6):
        queue.offer(Inbound("llm/records/a", b'{"id": "r%d"}' % i, partial(acked.append, i)))
    for _ in range(20):
        await asyncio.sleep(0)  # let the ingest task run as far as it can
    assert queue.processed == 0 and events == ["pause"]  # held: the socket stays paused
    async with store:  # commits resume
        await asyncio.wait_for(queue.wait_idle(), 10)
        await store.flush()
    runner.cancel()
    assert events == ["pause", "resume"] and acked == list(range(6))
    assert prom.dropped.labels("store")._value.get() == 0  # nothing dropped on the way
