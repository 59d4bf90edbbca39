"""The judge's state in SQLite beside a node's own store (judge/store.py's `JudgeStore`).

Sampling reads the store's `records` table on this store's own connection (WAL lets it read
while the store writes); the sample key is a SQLite function, so a run's candidates are ranked
in the database and only the picked records are read into memory. A node alone has no peer to
race for a schedule tick, so a run's key is not stored here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookout.detectors.judge import sample_key
from lookout.monitor.judge.store import (
    Candidate,
    RunTotals,
    SampleQuery,
    StoredVerdict,
)
from lookout.monitor.storage.feedback import NEGATIVE_FEEDBACK_SQL
from lookout.monitor.storage.judge_reads import JudgeReads
from lookout.monitor.storage.schema import migrate_sqlite
from lookout.sqlite_thread import SqliteBacked, SqliteThread

if TYPE_CHECKING:
    import sqlite3


def _in(column: str, values: Sequence[str], args: list[Any]) -> str:
    args.extend(values)
    return f" AND {column} IN ({', '.join('?' * len(values))})"


def _candidates(db: sqlite3.Connection, q: SampleQuery) -> list[Candidate]:
    args: list[Any] = [q.seed, q.since]
    where = "r.received_at >= ? AND r.response IS NOT NULL AND r.response != ''"
    for column, values in (("r.app", q.apps), ("r.model", q.models), ("r.status", q.statuses)):
        if values:
            where += _in(column, values, args)
    ood = (
        "EXISTS (SELECT 1 FROM json_each(r.flags, '$.ood') f"
        " WHERE json_extract(f.value, '$.flagged'))"
    )
    order = "judged"
    order += ", disliked DESC" if q.feedback_first else ""
    order += ", flagged DESC" if q.ood_first else ""
    sql = (
        "SELECT id, app, model, prompt, response, metadata, flagged, disliked FROM ("
        f" SELECT *, ROW_NUMBER() OVER (PARTITION BY app ORDER BY {order}, judge_key(id, ?))"
        " AS rank FROM ("
        f"  SELECT r.id, r.app, r.model, r.prompt, r.response, r.metadata, {ood} AS flagged,"
        f"   {NEGATIVE_FEEDBACK_SQL} AS disliked,"
        "   r.id IN (SELECT record_id FROM judge_verdicts) AS judged"
        f"  FROM records r WHERE {where}"
        " )) WHERE rank <= ? ORDER BY app, rank"
    )
    # Placeholders bind in the order they appear: the seed's comes before the WHERE clause's.
    args.append(q.per_app)
    return [Candidate.of_row(row) for row in db.execute(sql, args)]


class SqliteJudgeStore(SqliteBacked, JudgeReads):
    def __init__(self, path: Path) -> None:
        self._sql = SqliteThread(
            path, migrate=migrate_sqlite, synchronous="NORMAL", name="lookout-judge"
        )

    async def __aenter__(self) -> SqliteJudgeStore:
        await super().__aenter__()

        def register() -> None:
            # Shifted into SQLite's signed 64-bit integers; the order is unchanged.
            self._sql.conn().create_function(
                "judge_key",
                2,
                lambda rid, seed: sample_key(str(rid), str(seed)) >> 1,
                deterministic=True,
            )

        await self._sql.run(register)
        return self

    async def _fetch(self, sql: str, args: Any) -> list[tuple[Any, ...]]:
        return await self._sql.run(lambda: self._sql.conn().execute(sql, args).fetchall())

    async def candidates(self, query: SampleQuery) -> list[Candidate]:
        """Up to `per_app` records per app: unjudged first (those with negative feedback, then
        OOD-flagged ones, first if asked), each group in the order of the seeded sample key,
        so the same state picks the same ids."""
        return await self._sql.run(lambda: _candidates(self._sql.conn(), query))

    async def start_run(
        self, now: float, trigger: str, app: str | None, run_key: str | None = None
    ) -> int:
        """Always starts: a node alone has no peer to take its tick."""

        def work() -> int:
            cur = self._sql.conn().execute(
                "INSERT INTO judge_runs (started_at, trigger, app) VALUES (?, ?, ?)",
                (now, trigger, app),
            )
            return int(cur.lastrowid or 0)

        return await self._sql.run(work)

    async def record(
        self, run_id: int, verdicts: Sequence[StoredVerdict], totals: RunTotals
    ) -> None:
        """One judged (or failed, or skipped) record's verdicts and the run's totals so far, in
        one transaction: a crash mid-run keeps what was judged and what it cost."""
        rows = [astuple(v) for v in verdicts]  # `passed` a bool: 1 or 0 in SQLite

        def work() -> None:
            db = self._sql.conn()
            with db:
                db.execute("BEGIN")
                if rows:
                    db.executemany(
                        "INSERT OR REPLACE INTO judge_verdicts VALUES (?,?,?,?,?,?,?,?,?,?)", rows
                    )
                db.execute(
                    "UPDATE judge_runs SET judged=?, failed=?, skipped=?, input_tokens=?,"
                    " output_tokens=?, cost=? WHERE id=?",
                    (
                        totals.judged,
                        totals.failed,
                        totals.skipped,
                        totals.input_tokens,
                        totals.output_tokens,
                        totals.cost,
                        run_id,
                    ),
                )

        await self._sql.run(work)

    async def interrupt_unfinished(self, now: float, *, others: bool = False) -> int:
        """Runs a crash or stop left `running`: they are over (a node alone has no others)."""
        if others:
            return 0
        sql = "UPDATE judge_runs SET outcome='interrupted', finished_at=? WHERE outcome='running'"
        return await self._sql.run(lambda: self._sql.conn().execute(sql, (now,)).rowcount)

    async def request_run(self, now: float, app: str | None) -> int:
        """A run request for the daemon (from `lookout judge run-now`)."""

        def work() -> int:
            cur = self._sql.conn().execute(
                "INSERT INTO judge_requests (requested_at, app) VALUES (?, ?)", (now, app)
            )
            return int(cur.lastrowid or 0)

        return await self._sql.run(work)

    async def take_requests(self, now: float) -> list[tuple[int, str | None]]:
        def work() -> list[tuple[int, str | None]]:
            db = self._sql.conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                rows = db.execute(
                    "SELECT id, app FROM judge_requests WHERE taken_at IS NULL ORDER BY id"
                ).fetchall()
                db.execute("UPDATE judge_requests SET taken_at = ? WHERE taken_at IS NULL", (now,))
            return [(int(r[0]), r[1]) for r in rows]

        return await self._sql.run(work)

    async def prune(self, before: float) -> None:
        def work() -> None:
            db = self._sql.conn()
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM judge_verdicts WHERE judged_at < ?", (before,))
                db.execute("DELETE FROM judge_runs WHERE started_at < ?", (before,))
                db.execute("DELETE FROM judge_requests WHERE requested_at < ?", (before,))

        await self._sql.run(work)
