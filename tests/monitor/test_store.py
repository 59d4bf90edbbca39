"""The main store, on SQLite and on PostgreSQL: sampled records, per-minute rollups, retention,
bounded rejected samples, back-pressure, redeliveries, refused rows."""

from __future__ import annotations

import asyncio
import functools
import json

import pytest
from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.ingest.records import DecodeLimits, decode_payload
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.metrics.rollups import RollupService
from lookout.monitor.storage import Store, open_store
from tests.stores import StoreDb

T0 = 1_700_000_040.0  # on a minute boundary


def settings(db: StoreDb, **store: object) -> Settings:
    return Settings.model_validate(
        {"store": {"url": db.url, **store}, "api": {"bind": "127.0.0.1:0"}}
    )


def store_of(db: StoreDb, registry: CollectorRegistry, clock: FakeClock, **cfg: object) -> Store:
    return open_store(settings(db, **cfg).store, IngestMetrics(registry), clock)


async def test_sample_rate_keeps_a_share_of_ok_records_and_every_error(store_db: StoreDb) -> None:
    clock = FakeClock(T0)
    daemon = Daemon(settings(store_db, record_sample_rate=0.2), clock=clock)
    async with daemon.store:
        for i in range(1000):
            error = ', "error": "boom"' if i % 10 == 0 else ""
            payload = f'{{"id": "r{i}", "latency_ms": 5{error}}}'.encode()
            daemon.pipeline.process_payload(payload, "llm/records/a", "mqtt", clock.now())
        await daemon.store.flush()
        errors = store_db.count("SELECT COUNT(*) FROM records WHERE status='error'")
        oks = store_db.count("SELECT COUNT(*) FROM records WHERE status='ok'")
    assert errors == 100
    assert 140 <= oks <= 220  # 20% of 900


async def test_a_shadow_record_is_stored_exactly_when_its_production_record_is(
    store_db: StoreDb,
) -> None:
    """At any sample rate the judge finds both halves of a shadow pair, or neither."""
    clock = FakeClock(T0)
    daemon = Daemon(settings(store_db, record_sample_rate=0.3), clock=clock)
    async with daemon.store:
        for i in range(1000):
            production = {"id": f"req-{i}", "model": "gpt-4o-mini", "response": "Settings."}
            shadow = {
                "id": f"shadow-{i}",
                "model": "claude-haiku",
                "response": "Open Settings > Reset.",
                "metadata": {"tenant": "acme", "shadow_of": f"req-{i}"},
            }
            # Either half may come first, alone or in a batch with the other.
            pair = [production, shadow] if i % 3 else [shadow, production]
            bodies = [pair] if i % 2 else pair
            for body in bodies:
                payload = json.dumps(body).encode()
                daemon.pipeline.process_payload(payload, "llm/records/bot", "mqtt", clock.now())
        await daemon.store.flush()
        stored = {row[0] for row in store_db.query("SELECT id FROM records WHERE app = 'bot'")}
    shadows = {s for s in stored if s.startswith("shadow-")}
    productions = stored - shadows
    assert {f"req-{s.removeprefix('shadow-')}" for s in shadows} == productions
    assert 250 <= len(productions) <= 350  # 30% of 1,000


async def test_every_completed_minute_is_rolled_up(store_db: StoreDb) -> None:
    clock = FakeClock(T0)
    daemon = Daemon(settings(store_db), clock=clock)
    rollups = RollupService(daemon.windows, daemon.store, clock)
    async with daemon.store:
        for second in range(150):  # two and a half minutes, one request a second
            payload = b'{"app": "shop", "latency_ms": %d, "output_tokens": 10}' % (second * 10)
            daemon.pipeline.process_payload(payload, None, "mqtt", clock.now())
            clock.advance(1)
        rollups.write(clock.now())
        await daemon.store.flush()
        points = await daemon.store.rollups(T0, app="shop", series="qps")
        latency = await daemon.store.rollups(T0, app="*", series="latency_p50")
    by_minute = {(p.minute, p.model): p.value for p in points}
    assert by_minute[(int(T0), "*")] == 1.0
    assert by_minute[(int(T0) + 60, "*")] == 1.0
    assert (int(T0) + 120, "*") not in by_minute  # the minute still running is not written
    # median of 0, 10, ..., 590 ms is 295 ms; of 600, ..., 1190 ms is 895 ms
    assert [p.value for p in latency if p.model == "*"] == pytest.approx([0.295, 0.895], abs=0.005)


async def test_retention_and_rejected_bound(store_db: StoreDb) -> None:
    clock = FakeClock(T0)
    store = store_of(store_db, CollectorRegistry(), clock, retention="1h", rejected_keep=5)
    async with store:
        old = decode_payload(b'[{"id": "old"}, {"latency_ms": -1}]', None, T0, DecodeLimits())
        for record in old.records:
            store.put_record(record, 0.0)
        for _ in range(12):
            store.put_rejected(old.rejections[0], "mqtt", T0)
        new = decode_payload(b'{"id": "new"}', None, T0 + 7200, DecodeLimits())
        store.put_record(new.records[0], 0.0)
        await store.flush()
        await store.prune(T0 + 7200)
        assert await store.get_record("old") is None
        assert (await store.get_record("new")) is not None
        assert len(await store.rejected(limit=100)) == 5


async def test_store_buffer_asks_for_a_pause_then_drops_only_past_the_hard_limit(
    store_db: StoreDb,
) -> None:
    registry = CollectorRegistry()
    store = store_of(store_db, registry, FakeClock(T0), queue_size=100, queue_hard_limit=120)
    records = decode_payload(b"[" + b",".join([b"{}"] * 150) + b"]", None, T0, DecodeLimits())
    for record in records.records[:99]:  # not opened: nothing commits, the buffer fills
        store.put_record(record, 0.0)
    assert store.has_room()
    store.put_record(records.records[99], 0.0)
    assert not store.has_room()  # sources pause here (back-pressure)
    assert registry.get_sample_value("lookout_dropped_total", {"queue": "store"}) is None
    for record in records.records[100:]:  # a source that does not pause
        store.put_record(record, 0.0)
    assert registry.get_sample_value("lookout_dropped_total", {"queue": "store"}) == 30


async def test_ids_are_an_apps_own_and_committed_ones_are_recognised_after_a_restart(
    store_db: StoreDb,
) -> None:
    clock = FakeClock(T0 + 5)
    payload = b'[{"id": "req-1", "app": "a", "latency_ms": 5}, {"id": "req-1", "app": "b"}]'
    first = Daemon(settings(store_db), clock=clock)
    async with first.store:
        await first.pipeline.restore()
        result = first.pipeline.process_payload(payload, None, "mqtt", clock.now())
        assert (result.accepted, result.duplicates) == (2, 0)  # app-b's req-1 is not app-a's
        await first.store.flush()
    clock.advance(10)
    second = Daemon(settings(store_db), clock=clock)  # a new process, say after kill -9
    async with second.store:
        await second.pipeline.restore()
        # The committed minute is back in the windows, and the redelivery is recognised.
        assert {(s.app, s.count) for s in second.current_stats() if s.model == "*"} == {
            ("a", 1),
            ("b", 1),
            ("*", 2),
        }
        redelivered = second.pipeline.process_payload(payload, None, "mqtt", clock.now())
        assert (redelivered.accepted, redelivered.duplicates) == (0, 2)
        await second.store.flush()
        partials = await second.store.partials(T0)
    assert sorted((p.app, p.count) for p in partials) == [("a", 1), ("b", 1)]
    assert partials[0].latency_s is not None


async def test_a_score_lands_on_its_own_apps_record_when_ids_repeat_across_apps(
    store_db: StoreDb,
) -> None:
    # Ids are unique per app only: app-b's req-1 is another record than app-a's.
    clock = FakeClock(T0)
    daemon = Daemon(settings(store_db, record_sample_rate=1.0), clock=clock)
    async with daemon.store:
        for app in ("app-a", "app-b"):
            payload = f'{{"id": "req-1", "app": "{app}", "latency_ms": 5}}'.encode()
            daemon.pipeline.process_payload(payload, None, "mqtt", clock.now())
        await daemon.store.flush()
        flags = '{"ood": {"prompt": {"score": 0.9, "flagged": true, "threshold": 0.5}}}'
        daemon.store.put_scores([("app-a", "req-1", 0.9, flags)])
        await daemon.store.flush()
        scores = dict(store_db.query("SELECT app, ood_score FROM records WHERE id = 'req-1'"))
    assert scores == {"app-a": 0.9, "app-b": None}


async def test_a_row_the_database_refuses_is_kept_aside_and_the_rest_commits(
    store_db: StoreDb,
) -> None:
    # A deterministic refusal (here an operator's trigger) must not stall ingest by retrying
    # the same group forever: the group is written row by row, the refused row kept aside.
    clock = FakeClock(T0)
    daemon = Daemon(settings(store_db, record_sample_rate=1.0), clock=clock)
    acked: list[int] = []
    async with daemon.store:
        store_db.refuse_record_ids("poison", "refused by trigger")
        for i, rid in enumerate(["a", "poison", "b"]):
            payload = f'{{"id": "{rid}", "latency_ms": 5, "prompt": "p{i}"}}'.encode()
            daemon.pipeline.process_payload(payload, "llm/records/shop", "mqtt", clock.now())
            daemon.pipeline.after_commit(functools.partial(acked.append, i))
        await asyncio.wait_for(daemon.store.flush(), 10)
        assert acked == [0, 1, 2]  # committed (all but the refused row), so acknowledged
        assert await daemon.store.get_record("a") is not None
        assert await daemon.store.get_record("b") is not None
        assert await daemon.store.get_record("poison") is None
        (sample,) = await daemon.store.rejected()
        assert sample.reason == "store_refused" and "refused by trigger" in sample.detail
        assert b'"poison"' in sample.sample
        # The record is still counted in the stored minute: only its sampled row is missing.
        (minute,) = await daemon.store.partials(T0 - 60)
        assert minute.count == 3
    dropped = daemon.registry.get_sample_value("lookout_dropped_total", {"queue": "store"})
    assert dropped == 1
