"""The judge store's statements whose SQL is the same on SQLite and PostgreSQL but for the
placeholder: both backends (sqlite_judge.py, pg_judge.py) inherit them and give `_fetch`."""

from __future__ import annotations

from typing import Any

from lookout.monitor.judge.store import RUN_COLUMNS, VERDICT_COLUMNS, RunInfo, StoredVerdict

_FAILURE_COLUMNS = (
    "record_id",
    "app",
    "model",
    "criterion",
    "score",
    "reasoning",
    "judged_at",
    "prompt",
    "response",
)


class JudgeReads:
    _param = "?"  # the backend's placeholder

    async def _fetch(self, sql: str, args: Any) -> list[tuple[Any, ...]]:
        """The rows of `sql` (none for a statement that returns none)."""
        raise NotImplementedError

    def _stmt(self, sql: str) -> str:
        return sql.replace("?", self._param)

    async def finish_run(
        self,
        run_id: int,
        now: float,
        outcome: str,
        *,
        detail: str = "",
        agreement: float | None = None,
        anchors: int = 0,
    ) -> None:
        sql = "UPDATE judge_runs SET finished_at=?, outcome=?, detail=?, agreement=?, anchors=?"
        args = (now, outcome, detail, agreement, anchors, run_id)
        await self._fetch(self._stmt(sql + " WHERE id=?"), args)

    async def tokens_since(self, since: float) -> int:
        sql = (
            "SELECT COALESCE(SUM(input_tokens + output_tokens), 0) FROM judge_runs"
            " WHERE started_at >= ?"
        )
        return int((await self._fetch(self._stmt(sql), (since,)))[0][0])

    async def runs(self, limit: int = 20, trigger: str | None = None) -> list[RunInfo]:
        sql = f"SELECT {RUN_COLUMNS} FROM judge_runs"
        args: tuple[Any, ...] = ()
        if trigger is not None:
            sql += " WHERE trigger = ?"
            args = (trigger,)
        rows = await self._fetch(self._stmt(sql + " ORDER BY id DESC LIMIT ?"), (*args, limit))
        return [RunInfo(*row) for row in rows]

    async def runs_after(self, run_id: int, limit: int) -> list[RunInfo]:
        sql = f"SELECT {RUN_COLUMNS} FROM judge_runs WHERE id > ? ORDER BY id LIMIT ?"
        return [RunInfo(*row) for row in await self._fetch(self._stmt(sql), (run_id, limit))]

    async def run(self, run_id: int) -> RunInfo | None:
        sql = f"SELECT {RUN_COLUMNS} FROM judge_runs WHERE id = ?"
        rows = await self._fetch(self._stmt(sql), (run_id,))
        return RunInfo(*rows[0]) if rows else None

    async def _verdicts(self, where: str, arg: float | str | int) -> list[StoredVerdict]:
        sql = f"SELECT {VERDICT_COLUMNS} FROM judge_verdicts WHERE {where}"
        return [StoredVerdict(*row) for row in await self._fetch(self._stmt(sql), (arg,))]

    async def verdicts_since(self, since: float) -> list[StoredVerdict]:
        return await self._verdicts("judged_at >= ? ORDER BY judged_at", since)

    async def verdicts_of_run(self, run_id: int) -> list[StoredVerdict]:
        return await self._verdicts("run_id = ? ORDER BY judged_at", run_id)

    async def verdicts_for(self, record_id: str) -> list[StoredVerdict]:
        return await self._verdicts("record_id = ? ORDER BY criterion", record_id)

    async def failures(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest failing verdicts with their records' texts, newest first."""
        sql = (
            "SELECT v.record_id, v.app, v.model, v.criterion, v.score, v.reasoning, v.judged_at,"
            " r.prompt, r.response FROM judge_verdicts v"
            " LEFT JOIN records r ON r.app = v.app AND r.id = v.record_id"
            " WHERE NOT v.passed ORDER BY v.judged_at DESC LIMIT ?"
        )
        rows = await self._fetch(self._stmt(sql), (limit,))
        return [dict(zip(_FAILURE_COLUMNS, row, strict=True)) for row in rows]

    async def agreements_since(self, since: float) -> list[tuple[float, float, int]]:
        """(finished_at, agreement, anchor verdicts) of runs that judged anchors."""
        sql = (
            "SELECT finished_at, agreement, anchors FROM judge_runs WHERE agreement IS NOT NULL"
            " AND finished_at >= ? ORDER BY finished_at"
        )
        rows = await self._fetch(self._stmt(sql), (since,))
        return [(float(r[0]), float(r[1]), int(r[2])) for r in rows]

    async def link_request(self, request_id: int, run_id: int) -> None:
        sql = "UPDATE judge_requests SET run_id = ? WHERE id = ?"
        await self._fetch(self._stmt(sql), (run_id, request_id))

    async def request_state(self, request_id: int) -> tuple[float | None, int | None]:
        """(taken_at, run_id) of a request."""
        sql = "SELECT taken_at, run_id FROM judge_requests WHERE id = ?"
        rows = await self._fetch(self._stmt(sql), (request_id,))
        return (rows[0][0], rows[0][1]) if rows else (None, None)
