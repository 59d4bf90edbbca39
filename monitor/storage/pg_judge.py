"""The judge's state on PostgreSQL (judge/store.py's `JudgeStore`), shared by a cluster's nodes:
the tables are migration 5 in schema.py, the connections the store's pool.

- One run per schedule tick: a scheduled run's row carries `run_key` "schedule:<tick>", and
  `INSERT ... ON CONFLICT (run_key) DO NOTHING` lets the first node in; a second node learns
  its tick is taken from the empty RETURNING and skips it.
- Run-now requests are taken with `FOR UPDATE SKIP LOCKED`, so each is taken by one node once.
- Sampling ranks the shared `records` table as the SQLite query does (negative feedback and
  OOD-flagged first when asked, unjudged first, per app), with a sample key computed in SQL:
  the first 16 hex digits of md5(seed, U+001F, record id), compared bytewise (`COLLATE "C"`).
  md5 is deterministic, the same on every node and server, and uniform enough to sample by;
  it is not SQLite's key (blake2b in Python), so one seed picks other records on the other
  backend.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import astuple
from typing import Any

from psycopg import AsyncConnection

from lookout.monitor.judge.store import (
    VERDICT_COLUMNS,
    Candidate,
    RunTotals,
    SampleQuery,
    StoredVerdict,
)
from lookout.monitor.storage.feedback import NEGATIVE_FEEDBACK_SQL
from lookout.monitor.storage.judge_reads import JudgeReads

# A pooled connection (autocommit), its driver's errors raised as StoreError.
Connect = Callable[[], AbstractAsyncContextManager[AsyncConnection[Any]]]

# Is a `records r` row flagged out-of-distribution on any field? (flags is lookout's JSON.)
OOD_FLAGGED_SQL = (
    "EXISTS (SELECT 1 FROM jsonb_each(CASE WHEN jsonb_typeof(r.flags::jsonb -> 'ood') = 'object'"
    " THEN r.flags::jsonb -> 'ood' ELSE '{}' END) f WHERE f.value ->> 'flagged' = 'true')"
)
_SAMPLE_KEY_SQL = "left(md5(%(seed)s || chr(31) || r.id), 16)"
_UPSERT_VERDICT = (
    f"INSERT INTO judge_verdicts ({VERDICT_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (record_id, criterion) DO UPDATE SET app = EXCLUDED.app,"
    " model = EXCLUDED.model, run_id = EXCLUDED.run_id, judged_at = EXCLUDED.judged_at,"
    " passed = EXCLUDED.passed, score = EXCLUDED.score, reasoning = EXCLUDED.reasoning,"
    " judge_model = EXCLUDED.judge_model"
)
# A run's records are written concurrently on the pool's connections, so the totals of one may
# commit after those of a later one: they only ever grow, so the larger stays.
_TOTALS = (
    "UPDATE judge_runs SET judged = GREATEST(judged, %s), failed = GREATEST(failed, %s),"
    " skipped = GREATEST(skipped, %s), input_tokens = GREATEST(input_tokens, %s),"
    " output_tokens = GREATEST(output_tokens, %s), cost = GREATEST(cost, %s) WHERE id = %s"
)


def _candidate_sql(q: SampleQuery) -> tuple[str, dict[str, Any]]:
    args: dict[str, Any] = {"seed": q.seed, "since": q.since, "per_app": q.per_app}
    where = "r.received_at >= %(since)s AND r.response IS NOT NULL AND r.response != ''"
    for column, values in (("app", q.apps), ("model", q.models), ("status", q.statuses)):
        if values:
            args[column] = list(values)
            where += f" AND r.{column} = ANY(%({column})s)"
    order = "judged"
    order += ", disliked DESC" if q.feedback_first else ""
    order += ", flagged DESC" if q.ood_first else ""
    sql = (
        "SELECT id, app, model, prompt, response, metadata, flagged, disliked FROM ("
        f" SELECT *, ROW_NUMBER() OVER (PARTITION BY app ORDER BY {order},"
        '  sample_key COLLATE "C", id) AS rank FROM ('
        f"  SELECT r.id, r.app, r.model, r.prompt, r.response, r.metadata,"
        f"   {OOD_FLAGGED_SQL} AS flagged, {NEGATIVE_FEEDBACK_SQL} AS disliked,"
        "   EXISTS (SELECT 1 FROM judge_verdicts v WHERE v.record_id = r.id) AS judged,"
        f"   {_SAMPLE_KEY_SQL} AS sample_key"
        f"  FROM records r WHERE {where}) c"
        ') ranked WHERE rank <= %(per_app)s ORDER BY app COLLATE "C", rank'
    )
    return sql, args


class PgJudgeStore(JudgeReads):
    """`node`: this node's id, on the runs it starts and the requests it takes."""

    _param = "%s"

    def __init__(self, connect: Connect, *, node: str) -> None:
        self._connect = connect
        self._node = node

    async def _fetch(self, sql: str, args: Any) -> list[tuple[Any, ...]]:
        async with self._connect() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall() if cur.description is not None else []

    async def _count(self, sql: str, args: Any) -> int:
        async with self._connect() as conn:
            cur = await conn.execute(sql, args)
            return cur.rowcount

    async def candidates(self, query: SampleQuery) -> list[Candidate]:
        sql, args = _candidate_sql(query)
        return [Candidate.of_row(row) for row in await self._fetch(sql, args)]

    async def start_run(
        self, now: float, trigger: str, app: str | None, run_key: str | None = None
    ) -> int | None:
        rows = await self._fetch(
            "INSERT INTO judge_runs (run_key, node, started_at, trigger, app)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run_key) DO NOTHING RETURNING id",
            (run_key, self._node, now, trigger, app),
        )
        return int(rows[0][0]) if rows else None

    async def record(
        self, run_id: int, verdicts: Sequence[StoredVerdict], totals: RunTotals
    ) -> None:
        rows = [astuple(v) for v in verdicts]
        t = totals
        async with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            if rows:
                await cur.executemany(_UPSERT_VERDICT, rows)
            await cur.execute(
                _TOTALS,
                (t.judged, t.failed, t.skipped, t.input_tokens, t.output_tokens, t.cost, run_id),
            )

    async def interrupt_unfinished(self, now: float, *, others: bool = False) -> int:
        """Only this node's (another node's run under way is its own), or only the others'.
        A predecessor still alive that finishes its run later overwrites the outcome."""
        return await self._count(
            "UPDATE judge_runs SET outcome='interrupted', finished_at=%s"
            f" WHERE outcome='running' AND node {'!=' if others else '='} %s",
            (now, self._node),
        )

    async def request_run(self, now: float, app: str | None) -> int:
        rows = await self._fetch(
            "INSERT INTO judge_requests (requested_at, app) VALUES (%s, %s) RETURNING id",
            (now, app),
        )
        return int(rows[0][0])

    async def take_requests(self, now: float) -> list[tuple[int, str | None]]:
        rows = await self._fetch(
            "UPDATE judge_requests SET taken_at = %s, taken_by = %s WHERE id IN ("
            " SELECT id FROM judge_requests WHERE taken_at IS NULL ORDER BY id"
            " FOR UPDATE SKIP LOCKED) RETURNING id, app",
            (now, self._node),
        )
        return sorted((int(r[0]), r[1]) for r in rows)

    async def prune(self, before: float) -> None:
        async with self._connect() as conn, conn.transaction():
            await conn.execute("DELETE FROM judge_verdicts WHERE judged_at < %s", (before,))
            await conn.execute("DELETE FROM judge_runs WHERE started_at < %s", (before,))
            await conn.execute("DELETE FROM judge_requests WHERE requested_at < %s", (before,))


@contextlib.asynccontextmanager
async def one_connection(url: str, *, connect_timeout_s: float) -> AsyncIterator[Connect]:
    """For a command (`lookout judge run-now`): one connection to the store's database,
    migrated, as a `Connect`."""
    import psycopg

    from lookout.errors import StoreError
    from lookout.monitor.storage.schema import migrate_postgres

    try:
        conn = await psycopg.AsyncConnection.connect(
            url, autocommit=True, connect_timeout=max(1, round(connect_timeout_s))
        )
    except psycopg.Error as exc:
        raise StoreError(f"cannot reach the PostgreSQL store: {exc}") from exc
    async with conn:
        await migrate_postgres(conn)

        @contextlib.asynccontextmanager
        async def connect() -> AsyncIterator[AsyncConnection[Any]]:
            try:
                yield conn
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL store: {exc}") from exc

        yield connect
