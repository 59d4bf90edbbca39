"""The judge's reference scores and pairwise verdicts in SQLite beside a node's own store
(judge/eval_store.py's `EvalStore`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookout.monitor.judge.eval_store import (
    PAIR_COLUMNS,
    REFERENCE_COLUMNS,
    PairCandidate,
    PairQuery,
    ReferenceCandidate,
    ReferenceScore,
    StoredPair,
)
from lookout.monitor.storage.schema import migrate_sqlite
from lookout.sqlite_thread import SqliteBacked, SqliteThread

if TYPE_CHECKING:
    import sqlite3


def _path(key: str) -> str:
    """A JSON path naming one top-level key, quoted (keys may hold dots)."""
    return '$."' + key.replace('"', '\\"') + '"'


def _meta(alias: str, key: str, args: list[Any]) -> str:
    args.append(_path(key))
    return f"CASE WHEN json_valid({alias}.metadata) THEN json_extract({alias}.metadata, ?) END"


def _apps(alias: str, apps: Sequence[str], args: list[Any]) -> str:
    args.extend(apps)
    return f" AND {alias}.app IN ({', '.join('?' * len(apps))})" if apps else ""


def _reference_candidates(
    db: sqlite3.Connection, since: float, key: str, limit: int, apps: Sequence[str]
) -> list[ReferenceCandidate]:
    args: list[Any] = []
    ref = _meta("r", key, args)
    # The key's name in the text first: most records' metadata is never parsed as JSON.
    args += [since, f'"{key}"']
    only = _apps("r", apps, args)
    sql = (
        f"SELECT id, app, model, response, ref FROM (SELECT r.id, r.app, r.model, r.response,"
        f" r.received_at, {ref} AS ref FROM records r WHERE r.received_at >= ?"
        f" AND instr(r.metadata, ?) > 0{only} AND r.response IS NOT NULL AND r.response != ''"
        " AND r.id NOT IN (SELECT record_id FROM judge_reference_scores))"
        " WHERE typeof(ref) = 'text' AND ref != '' ORDER BY received_at, id LIMIT ?"
    )
    rows = db.execute(sql, [*args, limit]).fetchall()
    return [ReferenceCandidate(*row) for row in rows]


def _pair_candidates(db: sqlite3.Connection, q: PairQuery) -> list[PairCandidate]:
    args: list[Any] = []
    ref = _meta("p", q.reference_key, args)
    names = _meta("s", q.shadow_key, args)
    args += [q.since, f'"{q.shadow_key}"']
    only = _apps("s", q.apps, args)
    sql = (
        "SELECT app, pid, pmodel, sid, smodel, prompt, presp, sresp, ref FROM ("
        " SELECT p.app, p.id AS pid, p.model AS pmodel, s.id AS sid, s.model AS smodel,"
        f"  COALESCE(p.prompt, s.prompt, '') AS prompt, p.response AS presp,"
        f"  s.response AS sresp, {ref} AS ref, ROW_NUMBER() OVER ("
        "   PARTITION BY p.app ORDER BY s.received_at DESC, s.id) AS rank"
        f" FROM records s JOIN records p ON p.id = {names} AND p.app = s.app"
        f" WHERE s.received_at >= ? AND instr(s.metadata, ?) > 0{only}"
        "  AND s.response IS NOT NULL AND s.response != ''"
        "  AND p.response IS NOT NULL AND p.response != '' AND p.id != s.id"
        "  AND s.id NOT IN (SELECT shadow_id FROM judge_pairs)"
        ") WHERE rank <= ? ORDER BY app, rank"
    )
    rows = db.execute(sql, [*args, q.per_app]).fetchall()
    return [PairCandidate.of_row(row) for row in rows]


def _unpaired_shadows(db: sqlite3.Connection, q: PairQuery) -> int:
    """Shadow records the query would look at whose production record is not stored, not
    graded yet (the store samples both halves of a pair alike: mostly never sent, or in
    another app)."""
    args: list[Any] = [q.since, f'"{q.shadow_key}"']
    only = _apps("s", q.apps, args)
    names = _meta("s", q.shadow_key, args)
    other = _meta("s", q.shadow_key, args)
    sql = (
        f"SELECT COUNT(*) FROM records s WHERE s.received_at >= ? AND instr(s.metadata, ?) > 0"
        f"{only} AND typeof({names}) = 'text' AND NOT EXISTS (SELECT 1 FROM records p"
        f" WHERE p.id = {other} AND p.app = s.app)"
        " AND s.id NOT IN (SELECT shadow_id FROM judge_pairs)"
    )
    return int(db.execute(sql, args).fetchone()[0])


class SqliteEvalStore(SqliteBacked):
    def __init__(self, path: Path) -> None:
        self._sql = SqliteThread(
            path, migrate=migrate_sqlite, synchronous="NORMAL", name="lookout-judge-eval"
        )

    async def reference_candidates(
        self, since: float, key: str, limit: int, apps: Sequence[str] = ()
    ) -> list[ReferenceCandidate]:
        """Records received since `since` with a response and a text `metadata[key]`, not yet
        scored, oldest first."""
        return await self._sql.run(
            lambda: _reference_candidates(self._sql.conn(), since, key, limit, apps)
        )

    async def pair_candidates(self, query: PairQuery) -> list[PairCandidate]:
        """Up to `per_app` ungraded shadow records per app whose production record (named by
        `metadata[shadow_key]`, same app) is stored with a response, newest first."""
        return await self._sql.run(lambda: _pair_candidates(self._sql.conn(), query))

    async def unpaired_shadows(self, query: PairQuery) -> int:
        return await self._sql.run(lambda: _unpaired_shadows(self._sql.conn(), query))

    async def put_reference_scores(self, scores: Sequence[ReferenceScore]) -> None:
        rows = [astuple(s) for s in scores]

        def work() -> None:
            db = self._sql.conn()
            with db:
                db.execute("BEGIN")
                db.executemany(
                    "INSERT OR REPLACE INTO judge_reference_scores VALUES (?,?,?,?,?,?,?)", rows
                )

        await self._sql.run(work)

    async def put_pair(self, pair: StoredPair) -> None:
        sql = "INSERT OR REPLACE INTO judge_pairs VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
        row = astuple(pair)
        await self._sql.run(lambda: self._sql.conn().execute(sql, row) and None)

    async def references_since(self, since: float) -> list[ReferenceScore]:
        sql = (
            f"SELECT {REFERENCE_COLUMNS} FROM judge_reference_scores WHERE scored_at >= ?"
            " ORDER BY scored_at"
        )
        rows = await self._sql.run(lambda: self._sql.conn().execute(sql, (since,)).fetchall())
        return [ReferenceScore(*row) for row in rows]

    async def pairs_since(self, since: float) -> list[StoredPair]:
        sql = f"SELECT {PAIR_COLUMNS} FROM judge_pairs WHERE judged_at >= ? ORDER BY judged_at"
        rows = await self._sql.run(lambda: self._sql.conn().execute(sql, (since,)).fetchall())
        return [StoredPair(*row) for row in rows]

    async def evaluations_for(self, record_id: str) -> dict[str, Any]:
        """A record's reference score and the pairs it is in (as production or shadow)."""

        def work() -> dict[str, Any]:
            db = self._sql.conn()
            score = db.execute(
                f"SELECT {REFERENCE_COLUMNS} FROM judge_reference_scores WHERE record_id = ?",
                (record_id,),
            ).fetchone()
            pairs = db.execute(
                f"SELECT {PAIR_COLUMNS} FROM judge_pairs WHERE shadow_id = ? OR production_id = ?"
                " ORDER BY judged_at",
                (record_id, record_id),
            ).fetchall()
            return {
                "reference": None if score is None else ReferenceScore(*score),
                "pairs": [StoredPair(*row) for row in pairs],
            }

        return await self._sql.run(work)

    async def prune(self, before: float) -> None:
        def work() -> None:
            db = self._sql.conn()
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM judge_reference_scores WHERE scored_at < ?", (before,))
                db.execute("DELETE FROM judge_pairs WHERE judged_at < ?", (before,))

        await self._sql.run(work)
