"""The judge's reference scores and pairwise verdicts on PostgreSQL (judge/eval_store.py's
`EvalStore`), shared by a cluster's nodes: migration 5's tables, the store's pool, candidates
from the shared `records` table with the SQLite queries' semantics. A record's metadata is the
JSON object ingest validated, so it is read with `::jsonb`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple
from typing import Any

from lookout.monitor.judge.eval_store import (
    PAIR_COLUMNS,
    REFERENCE_COLUMNS,
    PairCandidate,
    PairQuery,
    ReferenceCandidate,
    ReferenceScore,
    StoredPair,
)
from lookout.monitor.storage.pg_judge import Connect


def _text(alias: str, key: str) -> str:
    """`alias.metadata[key]` when it is a string, else NULL; `key` bound as %(key)s."""
    value = f"({alias}.metadata::jsonb -> %({key})s)"
    return f"CASE WHEN jsonb_typeof({value}) = 'string' THEN {value} #>> '{{}}' END"


def _apps(alias: str, apps: Sequence[str], args: dict[str, Any]) -> str:
    if not apps:
        return ""
    args["apps"] = list(apps)
    return f" AND {alias}.app = ANY(%(apps)s)"


_UPSERT_REFERENCE = (
    f"INSERT INTO judge_reference_scores ({REFERENCE_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (record_id) DO UPDATE SET app = EXCLUDED.app, model = EXCLUDED.model,"
    " scored_at = EXCLUDED.scored_at, string_similarity = EXCLUDED.string_similarity,"
    " embedding_similarity = EXCLUDED.embedding_similarity, embedder = EXCLUDED.embedder"
)
_UPSERT_PAIR = (
    f"INSERT INTO judge_pairs ({PAIR_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
    " ON CONFLICT (shadow_id) DO UPDATE SET production_id = EXCLUDED.production_id,"
    " app = EXCLUDED.app, model = EXCLUDED.model, shadow_model = EXCLUDED.shadow_model,"
    " run_id = EXCLUDED.run_id, judged_at = EXCLUDED.judged_at, outcome = EXCLUDED.outcome,"
    " production_first = EXCLUDED.production_first, shadow_first = EXCLUDED.shadow_first,"
    " reasoning = EXCLUDED.reasoning, judge_model = EXCLUDED.judge_model"
)


class PgEvalStore:
    def __init__(self, connect: Connect) -> None:
        self._connect = connect

    async def _rows(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        async with self._connect() as conn:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

    async def reference_candidates(
        self, since: float, key: str, limit: int, apps: Sequence[str] = ()
    ) -> list[ReferenceCandidate]:
        # The key's name in the text first: most records' metadata is never parsed as JSON.
        args: dict[str, Any] = {"key": key, "quoted": f'"{key}"', "since": since, "limit": limit}
        only = _apps("r", apps, args)
        sql = (
            "SELECT id, app, model, response, ref FROM (SELECT r.id, r.app, r.model, r.response,"
            f" r.received_at, {_text('r', 'key')} AS ref FROM records r"
            " WHERE r.received_at >= %(since)s AND strpos(r.metadata, %(quoted)s) > 0"
            f"{only} AND r.response IS NOT NULL AND r.response != ''"
            " AND NOT EXISTS (SELECT 1 FROM judge_reference_scores s WHERE s.record_id = r.id)"
            ") c WHERE ref IS NOT NULL AND ref != '' ORDER BY received_at, id LIMIT %(limit)s"
        )
        return [ReferenceCandidate(*row) for row in await self._rows(sql, args)]

    async def pair_candidates(self, query: PairQuery) -> list[PairCandidate]:
        q = query
        args: dict[str, Any] = {
            "ref_key": q.reference_key,
            "shadow_key": q.shadow_key,
            "quoted": f'"{q.shadow_key}"',
            "since": q.since,
            "per_app": q.per_app,
        }
        only = _apps("s", q.apps, args)
        sql = (
            "SELECT app, pid, pmodel, sid, smodel, prompt, presp, sresp, ref FROM ("
            " SELECT p.app, p.id AS pid, p.model AS pmodel, s.id AS sid, s.model AS smodel,"
            "  COALESCE(p.prompt, s.prompt, '') AS prompt, p.response AS presp,"
            f"  s.response AS sresp, {_text('p', 'ref_key')} AS ref, ROW_NUMBER() OVER ("
            "   PARTITION BY p.app ORDER BY s.received_at DESC, s.id) AS rank"
            f" FROM records s JOIN records p ON p.id = {_text('s', 'shadow_key')}"
            "  AND p.app = s.app"
            f" WHERE s.received_at >= %(since)s AND strpos(s.metadata, %(quoted)s) > 0{only}"
            "  AND s.response IS NOT NULL AND s.response != ''"
            "  AND p.response IS NOT NULL AND p.response != '' AND p.id != s.id"
            "  AND NOT EXISTS (SELECT 1 FROM judge_pairs j WHERE j.shadow_id = s.id)"
            ') c WHERE rank <= %(per_app)s ORDER BY app COLLATE "C", rank'
        )
        return [PairCandidate.of_row(row) for row in await self._rows(sql, args)]

    async def unpaired_shadows(self, query: PairQuery) -> int:
        q = query
        args: dict[str, Any] = {
            "shadow_key": q.shadow_key,
            "quoted": f'"{q.shadow_key}"',
            "since": q.since,
        }
        only = _apps("s", q.apps, args)
        name = _text("s", "shadow_key")
        sql = (
            "SELECT COUNT(*) FROM records s WHERE s.received_at >= %(since)s"
            f" AND strpos(s.metadata, %(quoted)s) > 0{only} AND {name} IS NOT NULL"
            f" AND NOT EXISTS (SELECT 1 FROM records p WHERE p.id = {name} AND p.app = s.app)"
            " AND NOT EXISTS (SELECT 1 FROM judge_pairs j WHERE j.shadow_id = s.id)"
        )
        (row,) = await self._rows(sql, args)
        return int(row[0])

    async def put_reference_scores(self, scores: Sequence[ReferenceScore]) -> None:
        if not scores:
            return
        async with self._connect() as conn, conn.transaction(), conn.cursor() as cur:
            await cur.executemany(_UPSERT_REFERENCE, [astuple(s) for s in scores])

    async def put_pair(self, pair: StoredPair) -> None:
        async with self._connect() as conn:
            await conn.execute(_UPSERT_PAIR, astuple(pair))

    async def references_since(self, since: float) -> list[ReferenceScore]:
        sql = (
            f"SELECT {REFERENCE_COLUMNS} FROM judge_reference_scores WHERE scored_at >= %s"
            " ORDER BY scored_at"
        )
        return [ReferenceScore(*row) for row in await self._rows(sql, (since,))]

    async def pairs_since(self, since: float) -> list[StoredPair]:
        sql = f"SELECT {PAIR_COLUMNS} FROM judge_pairs WHERE judged_at >= %s ORDER BY judged_at"
        return [StoredPair(*row) for row in await self._rows(sql, (since,))]

    async def evaluations_for(self, record_id: str) -> dict[str, Any]:
        scores = await self._rows(
            f"SELECT {REFERENCE_COLUMNS} FROM judge_reference_scores WHERE record_id = %s",
            (record_id,),
        )
        pairs = await self._rows(
            f"SELECT {PAIR_COLUMNS} FROM judge_pairs WHERE shadow_id = %s OR production_id = %s"
            " ORDER BY judged_at",
            (record_id, record_id),
        )
        return {
            "reference": ReferenceScore(*scores[0]) if scores else None,
            "pairs": [StoredPair(*row) for row in pairs],
        }

    async def prune(self, before: float) -> None:
        async with self._connect() as conn, conn.transaction():
            await conn.execute("DELETE FROM judge_reference_scores WHERE scored_at < %s", (before,))
            await conn.execute("DELETE FROM judge_pairs WHERE judged_at < %s", (before,))
