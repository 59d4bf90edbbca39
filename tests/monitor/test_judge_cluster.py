"""The judge on PostgreSQL, as a cluster runs it: records written through the shared store are
sampled (as on SQLite: the sampling test runs on both backends) and judged, two nodes on one
database make one run per schedule tick, the judge role's loss hands the schedule to another
node, and a run-now request is run once."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.monitor.cluster.leadership import Leadership, Role, RoleGate
from lookout.monitor.config import JudgeConfig, Settings, StoreConfig
from lookout.monitor.ingest.feedback import Feedback
from lookout.monitor.ingest.records import Record
from lookout.monitor.judge.backends import command_store
from lookout.monitor.judge.client import JudgeClient
from lookout.monitor.judge.service import JudgeService
from lookout.monitor.judge.store import JudgeStore, RunTotals, SampleQuery, StoredVerdict
from lookout.monitor.metrics.prices import Price, PriceTable
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage import Store
from lookout.monitor.storage.pg_evals import PgEvalStore
from lookout.monitor.storage.pg_judge import PgJudgeStore
from lookout.monitor.storage.pg_leases import PgRoleLock
from lookout.monitor.storage.postgres import PostgresStore
from lookout.monitor.storage.schema import POSTGRES_MIGRATIONS, migrate_postgres
from lookout.monitor.storage.sqlite import SqliteStore
from lookout.monitor.storage.sqlite_judge import SqliteJudgeStore
from lookout.redaction import Redactor
from tests.conftest import eventually
from tests.monitor.test_judging import Gated, record, yes_no
from tests.stores import BACKENDS, pg_database

NOW = 1_800_000_000.0  # a multiple of 20 s: the schedule's ticks fall on it
TIMEOUT_S = 15.0


@pytest.fixture
def db_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


@contextlib.asynccontextmanager
async def pg_store(url: str, clock: FakeClock, node: str) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(
        StoreConfig(url=url), IngestMetrics(CollectorRegistry()), clock, node=node
    )
    async with store:
        yield store


async def put_records(
    store: Store,
    records: list[Record],
    flagged: tuple[str, ...] = (),
    disliked: tuple[str, ...] = (),
) -> None:
    for r in records:
        store.put_record(r, 0.0)
    app_of = {r.id: r.app for r in records}
    flags = json.dumps({"ood": {"prompt": {"score": 0.9, "flagged": True}}})
    store.put_scores([(app_of[rid], rid, 0.9, flags) for rid in flagged])
    for rid in disliked:
        store.feedback.put(Feedback(app_of[rid], rid, "thumbs", "u1", 0.0, NOW, NOW), True)
    await store.flush()


@contextlib.asynccontextmanager
async def judge_node(
    store: PostgresStore,
    node: str,
    clock: FakeClock,
    registry: CollectorRegistry,
    *,
    gate: RoleGate | None = None,
    model: Any = None,
    **cfg: Any,
) -> AsyncIterator[JudgeService]:
    config = JudgeConfig.model_validate(
        {
            "enabled": True,
            "model": "openai:judge-mini",
            "criteria": ["helpfulness"],
            "schedule": {"interval": "20s"},
            **cfg,
        }
    )
    client = JudgeClient(model or yes_no("Y"), Redactor(), max_concurrency=2, timeout_s=5.0)
    service = JudgeService(
        config,
        store=PgJudgeStore(store.connection, node=node),
        client=client,
        clock=clock,
        registry=registry,
        prices=PriceTable({"judge-mini": Price(1.0, 2.0)}),
        poll_interval_s=0.05,
        schedule=False,  # the test fires the ticks, as the scheduler would
        eval_store=PgEvalStore(store.connection),
        gate=gate,
    )
    async with service:
        yield service


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def runs_in(url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(
            "SELECT run_key, node, trigger, outcome, judged FROM judge_runs ORDER BY id"
        ).fetchall()


@contextlib.asynccontextmanager
async def sampled_store(backend: str, folder: Path) -> AsyncIterator[tuple[Store, JudgeStore]]:
    """The store records are written through, and the judge's store that samples them."""
    clock = FakeClock(NOW)
    if backend == "sqlite":
        path = folder / "lookout.db"
        cfg = StoreConfig(url=f"sqlite:///{path}")
        async with (
            SqliteStore(cfg, IngestMetrics(CollectorRegistry()), clock) as store,
            SqliteJudgeStore(path) as book,
        ):
            yield store, book
        return
    with pg_database() as url:
        async with pg_store(url, clock, "a") as pg:
            yield pg, PgJudgeStore(pg.connection, node="a")


@pytest.mark.parametrize("backend", BACKENDS)
async def test_sampling_is_deterministic_prefers_unjudged_and_filters(
    backend: str, tmp_path: Path
) -> None:
    records = [
        record(i, app, model)
        for i in range(40)
        for app, model in (("bot", "m1"), ("bot", "m2"), ("help", "m1"))
    ]
    records += [record(100 + i, "bot", "m1", "error") for i in range(5)]
    async with sampled_store(backend, tmp_path) as (store, book):
        await put_records(
            store, records, flagged=("bot-m1-7", "help-m1-33"), disliked=("bot-m2-5",)
        )
        q = SampleQuery(since=NOW - 3600, per_app=5, seed="s1")
        first = await book.candidates(q)
        assert [c.id for c in first] == [c.id for c in await book.candidates(q)]
        assert [c.app for c in first] == ["bot"] * 5 + ["help"] * 5
        other_seed = await book.candidates(SampleQuery(since=NOW - 3600, per_app=5, seed="s2"))
        assert {c.id for c in other_seed} != {c.id for c in first}
        only = await book.candidates(
            SampleQuery(since=NOW - 3600, per_app=50, seed="s1", apps=["bot"], models=["m2"])
        )
        assert len(only) == 40 and {c.model for c in only} == {"m2"}
        errors = SampleQuery(since=NOW - 3600, per_app=50, seed="s1", statuses=["error"])
        assert await book.candidates(errors) == []  # no response: never sampled
        assert await book.candidates(SampleQuery(since=NOW, per_app=5, seed="s1")) == []
        # Disliked first, then OOD-flagged, when asked.
        ordered = SampleQuery(
            since=NOW - 3600, per_app=2, seed="s1", ood_first=True, feedback_first=True
        )
        picked = [(c.id, c.disliked, c.ood_flagged) for c in await book.candidates(ordered)]
        assert picked[0] == ("bot-m2-5", True, False) and picked[1] == ("bot-m1-7", False, True)
        assert picked[2] == ("help-m1-33", False, True)
        # Judged records go to the back of the line.
        run_id = await book.start_run(NOW, "manual", None)
        assert run_id is not None
        await book.record(
            run_id,
            [
                StoredVerdict(c.id, "helpfulness", c.app, c.model, run_id, NOW, True, 1.0, "", "j")
                for c in first
            ],
            RunTotals(judged=len(first)),
        )
        second = await book.candidates(q)
        assert len(second) == 10 and not {c.id for c in second} & {c.id for c in first}


async def test_a_run_on_postgres_judges_shared_records_and_every_node_sees_it(
    db_url: str,
) -> None:
    clock = FakeClock(NOW)
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    async with pg_store(db_url, clock, "a") as sa, pg_store(db_url, clock, "b") as sb:
        # Written through node b's store, judged by node a.
        await put_records(sb, [record(i, metadata='{"reference": "gold"}') for i in range(4)])
        async with (
            judge_node(sa, "a", clock, reg_a) as a,
            judge_node(sb, "b", clock, reg_b) as b,
        ):
            run = await a.run_once()
            assert (run.outcome, run.judged) == ("done", 4)
            verdicts = await PgJudgeStore(sb.connection, node="b").verdicts_for("bot-m1-2")
            assert [(v.criterion, v.passed) for v in verdicts] == [("helpfulness", True)]

            assert pass_rate(a) == (1.0, 4)
            # b read a's run from the store: its series, and its status' last run.
            await eventually(lambda: pass_rate(b) == (1.0, 4) and b.last_run is not None)
            assert b.last_run is not None and b.last_run.id == run.id
            similarity = [p for p in b.series(60, NOW) if p.metric == "judge_reference_similarity"]
            assert [p.count for p in similarity] == [4]  # the reference scores a's run made
        # A restart restores the series from the shared tables, not from a local file.
        async with judge_node(sb, "b", clock, CollectorRegistry()) as b:
            assert pass_rate(b) == (1.0, 4)


class GatedAfter(Gated):
    """Answers `free` calls at once, then waits on the gate."""

    free: int = 0

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        if self.calls < self.free:
            self.calls += 1
            return ChatResult(generations=[ChatGeneration(message=AIMessage("Short.\nY"))])
        return await super()._agenerate(messages, stop, run_manager, **kwargs)


def pass_rate(service: JudgeService) -> tuple[float | None, int] | None:
    points = [p for p in service.series(60, NOW) if p.metric == "judge_pass_rate"]
    return (points[0].value, points[0].count) if points else None


async def test_a_node_started_mid_run_counts_each_verdict_of_it_once(db_url: str) -> None:
    clock = FakeClock(NOW)
    gate, entered = asyncio.Event(), asyncio.Event()
    model = GatedAfter(gate=gate, entered=entered, free=2)
    async with pg_store(db_url, clock, "a") as sa, pg_store(db_url, clock, "b") as sb:
        await put_records(sa, [record(i) for i in range(4)])
        async with judge_node(sa, "a", clock, CollectorRegistry(), model=model) as a:
            task = asyncio.create_task(a.run_once())
            book = PgJudgeStore(sa.connection, node="a")

            async def two_stored() -> bool:
                return len(await book.verdicts_since(0)) == 2  # two judged, the others wait

            await eventually(two_stored)
            async with judge_node(sb, "b", clock, CollectorRegistry()) as b:
                assert pass_rate(b) == (1.0, 2)  # restored: what the run had stored so far
                gate.set()
                assert (await asyncio.wait_for(task, TIMEOUT_S)).judged == 4
                await eventually(lambda: b.last_run is not None and b.last_run.judged == 4)
                assert pass_rate(b) == (1.0, 4)  # the rest read once the run ended, none twice


async def test_two_nodes_on_one_database_make_one_run_per_schedule_tick(db_url: str) -> None:
    clock = FakeClock(NOW)
    regs = [CollectorRegistry(), CollectorRegistry()]
    async with pg_store(db_url, clock, "a") as sa, pg_store(db_url, clock, "b") as sb:
        await put_records(sa, [record(i) for i in range(30)])
        # Both nodes believe they hold the judge role (a split brain): the key still holds.
        async with (
            judge_node(sa, "a", clock, regs[0], sample_size=2) as a,
            judge_node(sb, "b", clock, regs[1], sample_size=2) as b,
        ):
            for tick in range(6):  # a 20 s schedule over two minutes
                clock.set(NOW + 20 * tick + 0.25)  # a fire comes a little after its tick
                await asyncio.gather(a.fire(), b.fire())

                def settled(fires: int = 2 * (tick + 1)) -> bool:
                    made = sum(sample(r, "lookout_judge_runs_total", outcome="done") for r in regs)
                    taken = sum(
                        sample(r, "lookout_judge_runs_skipped_total", reason="tick_taken")
                        for r in regs
                    )
                    return made + taken == fires

                await eventually(settled)
    runs = runs_in(db_url)
    assert [key for key, *_ in runs] == [f"schedule:{NOW + 20 * t:.3f}" for t in range(6)]
    assert {(trigger, outcome, judged) for _, _, trigger, outcome, judged in runs} == {
        ("schedule", "done", 2)
    }
    skipped = [sample(r, "lookout_judge_runs_skipped_total", reason="tick_taken") for r in regs]
    assert sum(skipped) == 6  # each tick: the node that came second skipped it


def leadership(url: str, node: str) -> Leadership:
    locks = {role: PgRoleLock(url, role.value, node=node, connect_timeout_s=5.0) for role in Role}
    return Leadership(locks, retry_interval_s=0.05, check_interval_s=0.05)  # type: ignore[arg-type]


async def test_the_judge_role_holder_schedules_and_its_loss_hands_the_schedule_over(
    db_url: str,
) -> None:
    clock = FakeClock(NOW)
    reg_a, reg_b = CollectorRegistry(), CollectorRegistry()
    async with pg_store(db_url, clock, "a") as sa, pg_store(db_url, clock, "b") as sb:
        await put_records(sa, [record(i) for i in range(10)])
        async with leadership(db_url, "a") as lead_a:
            gate_a = lead_a.gate(Role.JUDGE)
            await asyncio.wait_for(gate_a.wait_held(), TIMEOUT_S)
            async with (
                leadership(db_url, "b") as lead_b,
                judge_node(sa, "a", clock, reg_a, gate=gate_a, sample_size=2) as a,
                judge_node(sb, "b", clock, reg_b, gate=lead_b.gate(Role.JUDGE), sample_size=2) as b,
            ):
                clock.set(NOW + 0.25)
                await asyncio.gather(a.fire(), b.fire())
                await asyncio.wait_for(a.run_finished.wait(), TIMEOUT_S)
                assert sample(reg_b, "lookout_judge_runs_skipped_total", reason="standby") == 1
                # A run of a's that a crash left `running` (a node killed mid-run).
                book = PgJudgeStore(sb.connection, node="b")
                dead = await PgJudgeStore(sa.connection, node="a").start_run(
                    NOW + 1, "run-now", None
                )
                assert dead is not None
                # Node a's lock session dies: b takes the role and the schedule with it.
                with psycopg.connect(db_url, autocommit=True) as conn:
                    conn.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                        " WHERE application_name = 'lookout-leader:a'"
                        " AND datname = current_database()"
                    )
                await asyncio.wait_for(lead_b.gate(Role.JUDGE).wait_held(), TIMEOUT_S)
                await eventually(lambda: not gate_a.held)

                async def interrupted() -> bool:
                    run = await book.run(dead)
                    return run is not None and run.outcome == "interrupted"

                await eventually(interrupted)  # ended by the new holder, so nobody waits on it
                clock.set(NOW + 20.25)
                await asyncio.gather(a.fire(), b.fire())
                await asyncio.wait_for(b.run_finished.wait(), TIMEOUT_S)
                assert sample(reg_a, "lookout_judge_runs_skipped_total", reason="standby") == 1
    assert [(key, node) for key, node, *_ in runs_in(db_url)] == [
        (f"schedule:{NOW:.3f}", "a"),
        (None, "a"),
        (f"schedule:{NOW + 20:.3f}", "b"),
    ]


async def test_a_run_now_request_through_one_node_is_run_once(db_url: str) -> None:
    clock = FakeClock(NOW)
    settings = Settings.model_validate({"store": {"url": db_url}, "node": {"id": "cli"}})
    async with pg_store(db_url, clock, "a") as sa, pg_store(db_url, clock, "b") as sb:
        await put_records(sa, [record(i) for i in range(3)])
        async with command_store(settings) as cli:  # as `lookout judge run-now` does
            request_id = await cli.request_run(NOW, "bot")
        # Both nodes take requests (each believes it holds the role): one of them runs it.
        async with (
            judge_node(sa, "a", clock, CollectorRegistry()),
            judge_node(sb, "b", clock, CollectorRegistry()),
        ):
            book = PgJudgeStore(sa.connection, node="a")

            async def run_done() -> bool:
                _, run_id = await book.request_state(request_id)
                run = None if run_id is None else await book.run(run_id)
                return run is not None and run.outcome == "done"

            await eventually(run_done)
            assert await book.take_requests(NOW) == []  # taken: nobody can take it again
    runs = runs_in(db_url)
    assert [(trigger, outcome, judged) for _, _, trigger, outcome, judged in runs] == [
        ("run-now", "done", 3)
    ]


async def test_a_database_of_the_release_before_the_judge_tables_upgrades(db_url: str) -> None:
    async with await psycopg.AsyncConnection.connect(db_url, autocommit=True) as conn:
        before = tuple(m for m in POSTGRES_MIGRATIONS if m.version < 5)  # the judge's is 5
        assert await migrate_postgres(conn, before) == 4
        await conn.execute(
            "INSERT INTO records (id, ts, received_at, app, model, status, prompt, response)"
            " VALUES ('r1', %s, %s, 'bot', 'm1', 'ok', 'q?', 'a.')",
            (NOW, NOW),
        )
    clock = FakeClock(NOW)
    async with pg_store(db_url, clock, "a") as store:
        book = PgJudgeStore(store.connection, node="a")
        found = await book.candidates(SampleQuery(since=NOW - 60, per_app=5, seed="s"))
        assert [c.id for c in found] == ["r1"]
    with psycopg.connect(db_url, autocommit=True) as conn:
        versions = [v for (v,) in conn.execute("SELECT version FROM schema_migrations")]
    assert sorted(versions) == [m.version for m in POSTGRES_MIGRATIONS]
