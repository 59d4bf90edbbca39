"""Versioned migrations of the main store: databases made by earlier releases upgrade with
their rows intact, and a database newer than the code is refused."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from fastdigest import TDigest
from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.detectors.arrays import States
from lookout.errors import StoreError
from lookout.monitor.config import Settings
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage.base import PartialRow
from lookout.monitor.storage.postgres import PostgresStore
from lookout.monitor.storage.references import ReferenceInfo, References, ReferenceStore
from lookout.monitor.storage.schema import (
    POSTGRES_MIGRATIONS,
    SQLITE_MIGRATIONS,
    Migration,
    migrate_postgres,
    migrate_sqlite,
)
from lookout.monitor.storage.sqlite import SqliteStore
from lookout.monitor.storage.sqlite_judge import SqliteJudgeStore
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox
from tests.stores import pg_database

SCHEMAS = Path(__file__).resolve().parents[1] / "data" / "store_schemas"
T0 = 1_700_000_040.0
SQLITE_LATEST = SQLITE_MIGRATIONS[-1].version
POSTGRES_LATEST = POSTGRES_MIGRATIONS[-1].version


def open_store(db_path: Path) -> SqliteStore:
    cfg = Settings.model_validate({"store": {"url": f"sqlite:///{db_path}"}}).store
    return SqliteStore(cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0))


def old_database(db_path: Path, schema: str) -> None:
    """A database as an earlier release left it: its tables and a few rows."""
    with sqlite3.connect(db_path) as db:
        db.executescript((SCHEMAS / schema).read_text())
        for i, app in enumerate(["shop", "support"]):
            db.execute(
                "INSERT INTO records (id, ts, received_at, app, model, status, latency_ms,"
                " prompt, metadata) VALUES (?, ?, ?, ?, 'gpt', 'ok', ?, 'hi', '{\"k\": 1}')",
                (f"req-{i}", T0, T0, app, 100.0 + i),
            )
        db.execute("INSERT INTO rollups VALUES (?, 'shop', '*', 'qps', 2.5)", (int(T0),))
        db.execute(
            "INSERT INTO rejected (at, source, reason, detail, sample)"
            " VALUES (?, 'mqtt', 'invalid_json', 'bad', x'7b')",
            (T0,),
        )


def versions(db_path: Path) -> list[int]:
    with sqlite3.connect(db_path) as db:
        return [row[0] for row in db.execute("SELECT version FROM schema_migrations")]


@pytest.mark.parametrize(
    "schema", ["sqlite_unversioned_id_key.sql", "sqlite_unversioned_app_id_key.sql"]
)
async def test_a_database_of_an_earlier_release_upgrades_with_its_rows_intact(
    tmp_path: Path, schema: str
) -> None:
    db_path = tmp_path / "old.db"
    old_database(db_path, schema)
    async with open_store(db_path) as store:
        shop = await store.get_record("req-0")
        assert shop is not None
        assert (shop["app"], shop["latency_ms"], shop["prompt"]) == ("shop", 100.0, "hi")
        assert shop["metadata"] == '{"k": 1}'
        assert await store.count_records() == 2
        (qps,) = await store.rollups(T0, app="shop")
        assert (qps.series, qps.value) == ("qps", 2.5)
        (sample,) = await store.rejected()
        assert (sample.reason, sample.sample) == ("invalid_json", b"{")
        assert await store.partials(0) == []  # a table the oldest release did not have
    assert versions(db_path) == [m.version for m in SQLITE_MIGRATIONS]
    with sqlite3.connect(db_path) as db:
        # Keyed by (app, id) now: another app's req-0 is another record.
        db.execute(
            "INSERT INTO records (id, ts, received_at, app, model, status)"
            " VALUES ('req-0', 1, 1, 'support', 'gpt', 'ok')"
        )
        indexes = {row[1] for row in db.execute("PRAGMA index_list(records)")}
    assert {"records_id", "records_app_ts", "records_received"} <= indexes


async def test_opening_again_applies_nothing_twice(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    for _ in range(2):
        async with open_store(db_path):
            pass
    assert versions(db_path) == [m.version for m in SQLITE_MIGRATIONS]


def test_only_the_missing_migrations_run_in_order(tmp_path: Path) -> None:
    n = SQLITE_LATEST
    later = Migration(n + 1, "a later column", ("ALTER TABLE rejected ADD COLUMN node TEXT",))
    db = sqlite3.connect(tmp_path / "s.db", isolation_level=None)
    try:
        assert migrate_sqlite(db) == n
        assert migrate_sqlite(db, (*SQLITE_MIGRATIONS, later)) == n + 1
        assert migrate_sqlite(db, (*SQLITE_MIGRATIONS, later)) == n + 1
        columns = {row[1] for row in db.execute("PRAGMA table_info(rejected)")}
        assert "node" in columns
        failing = Migration(n + 2, "refused", ("CREATE TABLE records (x)",))  # exists: refused
        with pytest.raises(sqlite3.OperationalError):
            migrate_sqlite(db, (*SQLITE_MIGRATIONS, later, failing))
        # The failed migration left nothing behind: still the later version.
        got = [r[0] for r in db.execute("SELECT version FROM schema_migrations")]
        assert got == [*range(1, n + 2)]
    finally:
        db.close()


async def test_a_database_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    db_path = tmp_path / "s.db"
    async with open_store(db_path):
        pass
    with sqlite3.connect(db_path) as db:
        db.execute("INSERT INTO schema_migrations VALUES (99, 'from the future', 0)")
    newer = f"schema version 99, newer than this release's {SQLITE_LATEST}"
    with pytest.raises(StoreError, match=newer):
        async with open_store(db_path):
            pass


async def test_postgres_migrates_once_applies_only_what_is_missing_and_refuses_newer() -> None:
    n = POSTGRES_LATEST
    later = Migration(n + 1, "a later column", ("ALTER TABLE rejected ADD COLUMN node TEXT",))
    failing = Migration(n + 2, "refused", ("CREATE TABLE records (x int)",))  # exists: refused
    with pg_database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            assert await migrate_postgres(conn) == n
            assert await migrate_postgres(conn) == n
            assert await migrate_postgres(conn, (*POSTGRES_MIGRATIONS, later)) == n + 1
            with pytest.raises(psycopg.errors.DuplicateTable):
                await migrate_postgres(conn, (*POSTGRES_MIGRATIONS, later, failing))
            cur = await conn.execute("SELECT version FROM schema_migrations ORDER BY version")
            released = [m.version for m in POSTGRES_MIGRATIONS]
            assert [row[0] for row in await cur.fetchall()] == [*released, n + 1]
            newer = f"schema version {n + 1}, newer than this release's {n}"
            with pytest.raises(StoreError, match=newer):
                await migrate_postgres(conn)


async def test_a_postgres_database_of_the_previous_release_gains_the_alerting_tables() -> None:
    before_alerting = [m for m in POSTGRES_MIGRATIONS if m.version < 4]
    with pg_database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            assert await migrate_postgres(conn, before_alerting) == 3
            await conn.execute("INSERT INTO nodes VALUES ('a', %s, %s, '0.1', 7)", (T0, T0))
            assert await migrate_postgres(conn) == POSTGRES_LATEST
            cur = await conn.execute("SELECT node, records_last_minute FROM nodes")
            assert await cur.fetchall() == [("a", 7)]
            args = ("hook", "k", "{}", T0, T0)
            insert = (
                "INSERT INTO outbox (channel, idempotency_key, payload, created_at, next_at)"
                " VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING"
            )
            assert (await conn.execute(insert, args)).rowcount == 1
            assert (await conn.execute(insert, args)).rowcount == 0  # the dedup key
            for table in ("alert_states", "silences", "message_threads"):
                cur = await conn.execute(f"SELECT COUNT(*) FROM {table}")
                assert await cur.fetchone() == (0,)


async def save_reference(refs: References, source: str) -> ReferenceInfo:
    states: States = {"x": np.zeros((2, 3), np.float32)}
    return await refs.save(
        app="shop",
        field="prompt",
        source=source,
        embedder="static",
        size=2,
        states=states,
        texts=["a", "b"],
        now=T0,
        drift_threshold=0.1,
        ood_threshold=0.2,
    )


async def test_a_postgres_database_of_the_release_before_the_detectors_tables_upgrades() -> None:
    """A cluster's database made before the detectors' references moved to PostgreSQL
    (migrations up to 3): its rows stay, and references and drift samples can be written."""
    earlier = tuple(m for m in POSTGRES_MIGRATIONS if m.version <= 3)
    with pg_database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            assert await migrate_postgres(conn, earlier) == 3
            await conn.execute(
                "INSERT INTO records (id, ts, received_at, app, model, status)"
                " VALUES ('req-0', 1, 1, 'shop', 'gpt', 'ok')"
            )
            await conn.execute("INSERT INTO nodes VALUES ('a', 1, 2, '0.1', 5)")
            assert await migrate_postgres(conn) == POSTGRES_LATEST
            cur = await conn.execute("SELECT app FROM records UNION ALL SELECT node FROM nodes")
            assert sorted(r[0] for r in await cur.fetchall()) == ["a", "shop"]
        from lookout.monitor.storage.drift_samples import DriftSample
        from lookout.monitor.storage.pg_references import PgReferenceStore

        async with PgReferenceStore(url, node="a") as refs:
            info, again = [await save_reference(refs, source) for source in ("file", "auto")]
            assert (info.version, again.version) == (1, 2)
            assert await refs.active_ids() == {("shop", "prompt"): again.id}
            await refs.activate(info.id)
            assert await refs.active_ids() == {("shop", "prompt"): info.id}
            x = np.ones((3, 4), np.float16)
            await refs.samples.put([DriftSample("a", "shop", "prompt", info.id, T0, 1, x)])
            [sample] = await refs.samples.latest(10)
            assert (sample.node, sample.n, sample.flagged) == ("a", 3, 1)


async def test_a_postgres_database_of_the_previous_release_keeps_its_partials() -> None:
    """Partials written before each process wrote its own rows (migration 7) stay and are
    merged with the ones a node writes after the upgrade, under the same node id."""
    earlier = tuple(m for m in POSTGRES_MIGRATIONS if m.version <= 6)
    old = bytes(TDigest.from_values([0.1, 0.2]).to_bytes())
    with pg_database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            assert await migrate_postgres(conn, earlier) == 6
            await conn.execute(
                "INSERT INTO partials (minute, app, model, node, count, errors, output_tokens,"
                " tokens, token_records, cost, latency_s) VALUES (%s, 'shop', 'gpt', 'n1', 2,"
                " 1, 0, 0, 0, 0.5, %s)",
                (int(T0), old),
            )
        cfg = Settings.model_validate({"store": {"url": url}}).store
        store = PostgresStore(cfg, IngestMetrics(CollectorRegistry()), FakeClock(T0), node="n1")
        async with store:
            new = bytes(TDigest.from_values([3.0]).to_bytes())
            store.put_partials(
                [PartialRow(int(T0), "shop", "gpt", 1, 0, 0, 0, 0, 0.0, new, None, None)]
            )
            await store.flush()
            (minute,) = await store.partials(T0)
    assert (minute.count, minute.errors, minute.cost) == (3, 1, 0.5)
    assert minute.latency_s is not None
    assert TDigest.from_bytes(minute.latency_s).quantile(1.0) == 3.0


async def test_the_local_tables_of_the_previous_release_are_adopted_with_their_rows(
    tmp_path: Path,
) -> None:
    """Before migration 3 the outbox, references and judge created their own tables; the first
    of them to open such a file brings it to the newest version, rows intact."""
    db_path = tmp_path / "prev.db"
    with sqlite3.connect(db_path) as db:
        db.executescript((SCHEMAS / "sqlite_v2_local_tables.sql").read_text())
    async with SqliteOutbox(db_path) as outbox:
        (item,) = await outbox.due("hook", T0)
        assert (item.idempotency_key, item.payload) == ("k1", {"status": "firing"})
        (silence,) = await outbox.silences()
        assert (silence.id, silence.comment) == ("s1", "deploy")
        assert await outbox.message_ids("slack", ["errors:shop"]) == {
            "errors:shop": "1700000000.000100"
        }
    assert versions(db_path) == [m.version for m in SQLITE_MIGRATIONS]
    async with ReferenceStore(db_path) as refs:
        assert await refs.active_ids() == {("shop", "prompt"): 1}
    async with SqliteJudgeStore(db_path) as judge:
        (run,) = await judge.runs()
        assert (run.app, run.outcome, run.judged) == ("shop", "ok", 1)
        (verdict,) = await judge.verdicts_of_run(run.id)
        assert (verdict.record_id, verdict.score) == ("req-0", 0.9)
    async with open_store(db_path) as store:
        assert await store.count_records() == 0


@pytest.mark.parametrize("first", ["outbox", "references", "judge", "store"])
async def test_whichever_module_opens_a_new_file_first_makes_every_table(
    tmp_path: Path, first: str
) -> None:
    db_path = tmp_path / "new.db"
    openers: dict[str, Callable[[], contextlib.AbstractAsyncContextManager[Any]]] = {
        "outbox": lambda: SqliteOutbox(db_path),
        "references": lambda: ReferenceStore(db_path),
        "judge": lambda: SqliteJudgeStore(db_path),
        "store": lambda: open_store(db_path),
    }
    async with openers[first]():
        pass
    assert versions(db_path) == [m.version for m in SQLITE_MIGRATIONS]
    with sqlite3.connect(db_path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        # The store's records as its migrations define them, whoever came first.
        keyed = [row[1] for row in db.execute("PRAGMA table_info(records)") if row[5]]
    assert {"records", "outbox", "detector_refs", "judge_runs", "judge_pairs"} <= tables
    assert keyed == ["id", "app"]
