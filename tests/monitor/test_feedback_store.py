"""Users' feedback in the main store, on SQLite and on PostgreSQL: committed in the records'
commit group and acknowledged only after it, stored once per identity, read back in order,
pruned with the records, bounded like them; and a store of the release before feedback
upgrades to it with its rows intact."""

from __future__ import annotations

import asyncio
import sqlite3

import psycopg
from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.monitor.config import Settings
from lookout.monitor.ingest.feedback import Feedback
from lookout.monitor.ingest.records import DecodeLimits, Record, decode_payload
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage import Store, open_store
from lookout.monitor.storage.schema import (
    POSTGRES_MIGRATIONS,
    SQLITE_MIGRATIONS,
    migrate_postgres,
    migrate_sqlite,
)
from tests.stores import StoreDb

T0 = 1_700_000_040.0
COUNT = "SELECT COUNT(*) FROM feedback"


def store_of(db: StoreDb, registry: CollectorRegistry, **cfg: object) -> Store:
    settings = Settings.model_validate({"store": {"url": db.url, **cfg}})
    return open_store(settings.store, IngestMetrics(registry), FakeClock(T0))


def event(
    record_id: str, key: str = "thumbs", score: float = 0.0, user: str = "u1", at: float = T0
) -> Feedback:
    return Feedback("shop", record_id, key, user, score, ts=at, received_at=at)


def record(record_id: str) -> Record:
    payload = f'{{"id": "{record_id}", "app": "shop", "latency_ms": 5}}'.encode()
    return decode_payload(payload, None, T0, DecodeLimits()).records[0]


async def test_feedback_commits_with_the_records_and_is_acknowledged_after(
    store_db: StoreDb,
) -> None:
    store = store_of(store_db, CollectorRegistry())
    acked: list[int] = []
    async with store:
        store.put_record(record("r1"), 0.0)
        store.feedback.put(event("r1"), True)
        store.feedback.put(event("ghost", "rating", 4.0, at=T0 + 1), False)  # never stored
        store.after_commit(lambda: acked.append(store_db.count(COUNT)))
        assert store_db.count(COUNT) == 0  # in the open group only
        await store.flush()
        assert acked == [2]  # what the acknowledgement promises is committed
        (mine,) = await store.feedback.for_record("shop", "r1")
        assert (mine.key, mine.score, mine.negative) == ("thumbs", 0.0, True)
        (ghost,) = await store.feedback.for_record("shop", "ghost")
        assert (ghost.key, ghost.negative) == ("rating", False)
        assert await store.feedback.for_record("other-app", "r1") == []
    async with store_of(store_db, CollectorRegistry()) as reopened:
        assert len(await reopened.feedback.for_record("shop", "r1")) == 1


async def test_an_identity_is_stored_once_and_reads_come_back_in_order(store_db: StoreDb) -> None:
    async with store_of(store_db, CollectorRegistry()) as store:
        store.feedback.put(event("r1", at=T0 + 2), True)
        store.feedback.put(event("r1", "rating", 5.0, at=T0 + 1), False)
        store.feedback.put(event("r2", user="u2", at=T0 + 3), True)
        await store.flush()
        store.feedback.put(event("r1", score=1.0, at=T0 + 9), False)  # a redelivery, changed
        await store.flush()
        assert store_db.count(COUNT) == 3
        in_r1 = await store.feedback.for_record("shop", "r1")
        assert [(f.key, f.score) for f in in_r1] == [("rating", 5.0), ("thumbs", 0.0)]
        since = await store.feedback.since(T0 + 2)
        assert [(f.record_id, f.received_at) for f in since] == [("r1", T0 + 2), ("r2", T0 + 3)]
        newest = await store.feedback.recent(2)
        assert [(f.record_id, f.key) for f in newest] == [("r1", "thumbs"), ("r2", "thumbs")]


async def test_feedback_is_pruned_with_the_records_and_bounded_like_them(
    store_db: StoreDb,
) -> None:
    async with store_of(store_db, CollectorRegistry(), retention="1h") as store:
        store.feedback.put(event("old"), True)
        store.feedback.put(event("new", at=T0 + 7200), True)
        await store.flush()
        await store.prune(T0 + 7200)
        assert [f.record_id for f in await store.feedback.since(0)] == ["new"]
    registry = CollectorRegistry()
    bounded = store_of(store_db, registry, queue_size=100, queue_hard_limit=120)
    for i in range(99):  # not opened: nothing commits, the buffer fills
        bounded.feedback.put(event(f"r{i}"), False)
    assert bounded.has_room()
    bounded.feedback.put(event("r99"), False)
    assert not bounded.has_room()  # sources pause here (back-pressure)
    for i in range(100, 150):  # a source that does not pause
        bounded.feedback.put(event(f"r{i}"), False)
    assert registry.get_sample_value("lookout_dropped_total", {"queue": "store"}) == 30


async def test_a_group_the_database_refuses_in_part_still_commits_its_feedback(
    store_db: StoreDb,
) -> None:
    async with store_of(store_db, CollectorRegistry()) as store:
        store_db.refuse_record_ids("poison", "refused by trigger")
        store.put_record(record("poison"), 0.0)
        store.feedback.put(event("poison"), True)
        await asyncio.wait_for(store.flush(), 10)
        assert await store.get_record("poison") is None
        assert [f.key for f in await store.feedback.for_record("shop", "poison")] == ["thumbs"]


async def test_a_store_of_the_release_before_feedback_upgrades_to_it(store_db: StoreDb) -> None:
    insert = (
        "INSERT INTO records (id, ts, received_at, app, model, status)"
        " VALUES ('r1', 1, 1, 'shop', 'gpt', 'ok')"
    )
    if store_db.backend == "sqlite":
        db = sqlite3.connect(store_db.url.removeprefix("sqlite://"), isolation_level=None)
        try:
            assert migrate_sqlite(db, SQLITE_MIGRATIONS[:1]) == 1
            db.execute(insert)
        finally:
            db.close()
        versions_defined = [m.version for m in SQLITE_MIGRATIONS]
    else:
        async with await psycopg.AsyncConnection.connect(store_db.url, autocommit=True) as conn:
            assert await migrate_postgres(conn, POSTGRES_MIGRATIONS[:1]) == 1
            await conn.execute(insert)
        versions_defined = [m.version for m in POSTGRES_MIGRATIONS]
    assert store_db.count("SELECT COUNT(*) FROM schema_migrations") == 1
    async with store_of(store_db, CollectorRegistry()) as store:
        assert await store.get_record("r1") is not None
        store.feedback.put(event("r1"), True)
        await store.flush()
        assert len(await store.feedback.for_record("shop", "r1")) == 1
    versions = store_db.query("SELECT version FROM schema_migrations ORDER BY version")
    assert [v for (v,) in versions] == versions_defined
