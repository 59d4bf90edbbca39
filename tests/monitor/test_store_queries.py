"""The store's reads on both backends, and what only PostgreSQL has to get right: a lost
connection mid-stream, a commit retried after its outcome was unknown, nodes' partials merged
on read, text with NUL, a password kept out of errors."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from fastdigest import TDigest
from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.errors import StoreError
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage import PartialRow, RollupPoint, open_store, pg_groups
from lookout.monitor.storage.groups import CommitGroup
from lookout.monitor.storage.pg_groups import write_group
from lookout.monitor.storage.pg_partials import WriterPartials
from lookout.monitor.storage.postgres import PostgresStore
from tests.conftest import Receiver, eventually, free_port, running
from tests.stores import StoreDb, pg_database

T0 = 1_700_000_040.0  # on a minute boundary


def settings(url: str, **store: object) -> Settings:
    return Settings.model_validate({"store": {"url": url, **store}, "api": {"bind": "127.0.0.1:0"}})


def digest(*values: float) -> bytes:
    return bytes(TDigest.from_values(list(values)).to_bytes())


async def test_scores_of_two_fields_merge_and_the_flagged_record_is_listed(
    store_db: StoreDb,
) -> None:
    daemon = Daemon(settings(store_db.url, record_sample_rate=1.0), clock=FakeClock(T0))
    async with daemon.store as store:
        daemon.pipeline.process_payload(b'{"id": "r1", "app": "a"}', None, "mqtt", T0)
        daemon.pipeline.process_payload(b'{"id": "r2", "app": "a"}', None, "mqtt", T0)
        await store.flush()
        store.put_scores([("a", "r1", 0.2, '{"ood": {"prompt": {"flagged": false}}}')])
        store.put_scores([("a", "r1", 0.9, '{"ood": {"response": {"flagged": true}}}')])
        store.put_scores([("a", "r2", 0.3, '{"ood": {"prompt": {"flagged": false}}}')])
        await store.flush()
        flagged = await store.recent_flagged()
    assert [(r["id"], r["ood_score"]) for r in flagged] == [("r1", 0.9)]
    assert '"prompt"' in flagged[0]["flags"] and '"response"' in flagged[0]["flags"]


async def test_rollup_means_average_each_bucket(store_db: StoreDb) -> None:
    cfg = settings(store_db.url).store
    async with open_store(cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0)) as store:
        store.put_rollups(
            [RollupPoint(int(T0) + 60 * i, "a", "*", "qps", float(i)) for i in range(4)]
            + [RollupPoint(int(T0), "a", "gpt", "qps", 100.0)]  # per model: not in the chart
        )
        await store.flush()
        means = await store.rollup_means(T0, 120.0, until=T0 + 180)
    assert sorted((p.minute, p.value) for p in means) == [(int(T0), 0.5), (int(T0) + 120, 2.0)]


async def test_a_prompt_holding_nul_is_stored(store_db: StoreDb) -> None:
    daemon = Daemon(settings(store_db.url, record_sample_rate=1.0), clock=FakeClock(T0))
    async with daemon.store as store:
        payload = b'{"id": "nul", "prompt": "before\\u0000after", "latency_ms": 5}'
        daemon.pipeline.process_payload(payload, None, "mqtt", T0)
        await store.flush()
        record = await store.get_record("nul")
    assert record is not None
    # SQLite keeps the NUL; PostgreSQL text cannot hold one and shows U+FFFD in its place.
    assert record["prompt"] in ("before\x00after", "before\ufffdafter")


async def test_nodes_partials_of_a_minute_are_merged_on_read() -> None:
    with pg_database() as url:
        cfg = settings(url).store
        for node, latencies in (("n1", (0.1, 0.2)), ("n2", (0.3, 0.4))):
            async with PostgresStore(
                cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0), node=node
            ) as store:
                lat = digest(*latencies)
                store.put_partials(
                    [PartialRow(int(T0), "a", "m", 2, 1, 10, 20, 2, 0.5, lat, None, None)]
                )
                await store.flush()
                (minute,) = await store.partials(T0)
    assert (minute.count, minute.errors, minute.tokens, minute.cost) == (4, 2, 40, 1.0)
    assert minute.latency_s is not None
    assert TDigest.from_bytes(minute.latency_s).quantile(1.0) == pytest.approx(0.4)


async def test_a_group_written_again_after_an_unknown_commit_outcome_counts_once() -> None:
    with pg_database() as url:
        async with PostgresStore(
            settings(url).store, IngestMetrics(CollectorRegistry()), FakeClock(T0)
        ):
            pass  # migrated
        group = CommitGroup()
        group.partials = [PartialRow(int(T0), "a", "m", 3, 0, 0, 0, 0, 0.0, None, None, None)]
        group.ids = [("a", "r1")]
        totals = WriterPartials().advance(group.partials)
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await write_group(conn, group, "", T0, totals)
            await write_group(conn, group, "", T0, totals)  # the retry: COMMIT's answer was lost
            cur = await conn.execute(
                "SELECT SUM(count), (SELECT COUNT(*) FROM seen_ids) FROM partials"
            )
            assert await cur.fetchone() == (3, 1)


def lat_row(minute: int, count: int, *latencies: float) -> PartialRow:
    return PartialRow(minute, "a", "m", count, 0, 0, 0, 0, 0.0, digest(*latencies), None, None)


async def test_two_processes_with_one_node_id_add_up_rather_than_overwrite() -> None:
    with pg_database() as url:
        cfg = settings(url).store
        stores = [
            PostgresStore(cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0), node="n1")
            for _ in range(2)
        ]
        async with stores[0] as first, stores[1] as second:
            for i in range(3):  # interleaved groups of the same minute
                first.put_partials([lat_row(int(T0), 1, 0.1 * (i + 1))])
                await first.flush()
                second.put_partials([lat_row(int(T0), 2, 1.0, 2.0 + i)])
                await second.flush()
            (minute,) = await first.partials(T0)
    assert minute.count == 9
    assert minute.latency_s is not None
    assert TDigest.from_bytes(minute.latency_s).quantile(1.0) == pytest.approx(4.0)


async def test_a_late_record_for_a_minute_the_process_forgot_is_still_counted() -> None:
    with pg_database() as url:
        store = PostgresStore(
            settings(url).store, IngestMetrics(CollectorRegistry()), FakeClock(T0)
        )
        async with store:
            store.put_partials([lat_row(int(T0), 5, 0.1)])
            await store.flush()
            later = int(T0) + 3600  # an hour on: the first minute's running total is dropped
            store.put_partials([lat_row(later, 1, 0.2)])
            await store.flush()
            store.put_partials([lat_row(int(T0), 2, 0.3)])  # late, for the first minute
            await store.flush()
            first, last = await store.partials(T0)
    assert (first.minute, first.count, last.count) == (int(T0), 7, 1)
    assert first.latency_s is not None
    assert TDigest.from_bytes(first.latency_s).quantile(1.0) == pytest.approx(0.3)


async def test_a_group_given_up_after_its_write_may_have_committed_is_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pg_database() as url:
        store = PostgresStore(
            settings(url).store, IngestMetrics(CollectorRegistry()), FakeClock(T0)
        )
        async with store:
            store.put_partials([lat_row(int(T0), 1, 0.1)])
            await store.flush()
            written = pg_groups.write_group

            async def committed_but_unanswered(*args: Any) -> None:
                await written(*args)
                raise asyncio.CancelledError  # a stop's drain timeout, before the answer came

            monkeypatch.setattr(pg_groups, "write_group", committed_but_unanswered)
            store.put_partials([lat_row(int(T0), 10, 0.2)])
            with pytest.raises(asyncio.CancelledError):
                await store.flush()
            monkeypatch.setattr(pg_groups, "write_group", written)
            store.put_partials([lat_row(int(T0), 100, 0.3)])
            await store.flush()
            (minute,) = await store.partials(T0)
    assert minute.count == 111


async def test_an_infinite_cost_is_stored_rather_than_stalling_the_commits() -> None:
    # A price of .inf in the config makes costs infinite (or NaN): PostgreSQL's float8 takes
    # them, as it always did; JSON cannot carry them as numbers.
    with pg_database() as url:
        store = PostgresStore(
            settings(url).store, IngestMetrics(CollectorRegistry()), FakeClock(T0)
        )
        async with store:
            row = PartialRow(int(T0), "a", "m", 1, 0, 0, 0, 0, float("inf"), None, None, None)
            store.put_partials([row])
            await asyncio.wait_for(store.flush(), 10)
            (minute,) = await store.partials(T0)
    assert (minute.count, minute.cost) == (1, float("inf"))


async def committing_pid(admin: psycopg.AsyncConnection[Any]) -> int | None:
    cur = await admin.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        " AND state = 'active' AND query LIKE '%%INSERT INTO commit_groups%%'"
        " AND pid <> pg_backend_pid()"
    )
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def test_a_connection_lost_mid_commit_delays_acks_and_loses_nothing() -> None:
    with pg_database() as url:
        daemon = Daemon(settings(url, record_sample_rate=1.0), clock=FakeClock(T0))
        acked: list[int] = []
        async with (
            daemon.store as store,
            await psycopg.AsyncConnection.connect(url, autocommit=True) as admin,
        ):
            # Each commit dawdles, so the test can cut its connection while it is in flight.
            await admin.execute(
                "CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN PERFORM pg_sleep(0.3); RETURN NEW; END $$"
            )
            await admin.execute(
                "CREATE TRIGGER slow BEFORE INSERT ON commit_groups FOR EACH ROW"
                " EXECUTE FUNCTION slow()"
            )
            for i in range(300):
                payload = b'{"id": "r%d", "app": "a", "latency_ms": 5}' % i
                daemon.pipeline.process_payload(payload, None, "mqtt", T0)
                daemon.pipeline.after_commit(functools.partial(acked.append, i))
            flushing = asyncio.ensure_future(store.flush())
            pids: list[int] = []

            async def in_flight() -> bool:
                pid = await committing_pid(admin)
                pids.extend([pid] if pid else [])
                return bool(pids)

            await eventually(in_flight, timeout_s=10)
            assert not acked  # not committed yet, so not acknowledged
            await admin.execute("SELECT pg_terminate_backend(%s)", (pids[0],))
            await asyncio.wait_for(flushing, 30)
            assert acked == list(range(300))
            assert await store.count_records() == 300
            (minute,) = await store.partials(T0 - 60)
    assert minute.count == 300  # each record counted once, though its group was tried twice
    errors = daemon.registry.get_sample_value("lookout_store_errors_total")
    assert errors == 1


async def test_an_unreachable_database_is_a_clear_error_without_the_password() -> None:
    url = f"postgresql://lookout:s3cret-pw@127.0.0.1:{free_port()}/lookout"
    cfg = settings(url, connect_timeout_s=1).store
    store = open_store(cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0))
    with pytest.raises(StoreError) as caught:
        async with store:
            pass
    assert "s3cret-pw" not in str(caught.value)
    assert "postgresql://lookout:**********@127.0.0.1" in str(caught.value)


def test_postgres_urls_of_both_schemes_open_a_postgres_store() -> None:
    for scheme in ("postgres", "postgresql"):
        cfg = settings(f"{scheme}://postgres@127.0.0.1/x").store
        store = open_store(cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0))
        assert isinstance(store, PostgresStore)


async def test_a_daemon_on_postgres_alerts_with_its_outbox_in_the_local_file(
    settings_for: Callable[..., Settings], receiver: Receiver, tmp_path: Path
) -> None:
    with pg_database() as url:
        local = tmp_path / "node" / "local.db"
        settings = settings_for(
            store={"url": url, "local_url": f"sqlite:///{local}"},
            channels={"hook": {"kind": "webhook", "url": receiver.url}},
            rules=[
                {
                    "name": "busy",
                    "metric": "qps",
                    "op": ">",
                    "threshold": 0.0,
                    "min_samples": 1,
                    "channels": ["hook"],
                }
            ],
            eval_interval="100ms",
        )
        async with running(Daemon(settings), wait_bus=False) as d:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
                body = [{"id": f"r{i}", "app": "shop", "latency_ms": 5} for i in range(5)]
                answer = await http.post("/api/v1/records", json=body)
                assert answer.status_code == 200
            await asyncio.wait_for(receiver.received.wait(), 15)
            assert await d.store.count_records() == 5
    assert local.exists()  # the outbox: node-local state, in SQLite beside the store


async def test_two_writers_of_one_node_lose_no_sketch_when_they_commit_at_once() -> None:
    # Two processes that share a node name (say, a restart overlapping the old process): their
    # commits of the same minute serialise on the row, neither overwrites the other's t-digest.
    with pg_database() as url:
        cfg = settings(url).store
        a = PostgresStore(cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0))
        b = PostgresStore(cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0))
        async with a, b:
            for minute in range(10):
                at = int(T0) + 60 * minute
                for store in (a, b):
                    lat = digest(0.1, 0.2)
                    store.put_partials(
                        [PartialRow(at, "a", "m", 2, 0, 0, 0, 0, 0.0, lat, None, None)]
                    )
                await asyncio.gather(a.flush(), b.flush())
            minutes = await a.partials(T0)
    assert [m.count for m in minutes] == [4] * 10
    assert [TDigest.from_bytes(m.latency_s).n_values for m in minutes if m.latency_s] == [4] * 10


async def test_a_node_commits_its_minutes_under_its_own_id() -> None:
    with pg_database() as url:
        settings = Settings.model_validate(
            {"store": {"url": url}, "node": {"id": "node-a"}, "api": {"bind": "127.0.0.1:0"}}
        )
        daemon = Daemon(settings, clock=FakeClock(T0))
        async with daemon.store as store:
            daemon.pipeline.process_payload(b'{"app": "a", "latency_ms": 5}', None, "mqtt", T0)
            await store.flush()
        async with await psycopg.AsyncConnection.connect(url) as conn:
            cur = await conn.execute("SELECT node, app, count FROM partials WHERE app = 'a'")
            assert await cur.fetchall() == [("node-a", "a", 1)]
