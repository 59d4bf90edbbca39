"""SQLite store (WAL): one writer thread, group commits (committer.py), retention.

Every database call runs on one dedicated thread, so the event loop never waits on disk and
SQLite's single-writer rule holds by construction.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import TYPE_CHECKING, Any

import structlog

from lookout.errors import StoreError
from lookout.monitor.storage.base import (
    PartialRow,
    RejectedSample,
    RollupPoint,
    rollups_query,
    sqlite_path,
)
from lookout.monitor.storage.committer import GroupCommitStore
from lookout.monitor.storage.feedback import StoreFeedback
from lookout.monitor.storage.groups import (
    CommitGroup,
    prune_ids,
    recent_ids,
    write_group,
)
from lookout.monitor.storage.schema import migrate_sqlite
from lookout.sqlite_thread import SqliteThread, dict_rows

if TYPE_CHECKING:
    from lookout.clock import Clock
    from lookout.monitor.config import StoreConfig
    from lookout.monitor.metrics.prom import IngestMetrics

log = structlog.get_logger(__name__)


class SqliteStore(GroupCommitStore):
    _db_errors = (sqlite3.Error,)

    def __init__(
        self,
        cfg: StoreConfig,
        metrics: IngestMetrics,
        clock: Clock,
        *,
        keep_ids: int = 100_000,
    ) -> None:
        super().__init__(cfg, metrics, clock, keep_ids=keep_ids)
        self._sql = SqliteThread(
            sqlite_path(cfg.url),
            migrate=migrate_sqlite,
            synchronous="NORMAL",
            name="lookout-sqlite",
        )
        self._run = self._sql.run
        self._conn = self._sql.conn
        self.feedback = StoreFeedback(self.put_feedback, self._fetch, "?")

    async def _open_backend(self) -> None:
        try:
            await self._sql.open()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store at {self._sql.path}: {exc}") from exc

    async def _close_backend(self) -> None:
        await self._sql.close()

    async def _write(self, group: CommitGroup) -> int:
        at, keep = self._clock.now(), self._cfg.rejected_sample_bytes  # for refused rows
        return await self._run(lambda: write_group(self._conn(), group, at, keep))

    async def _fetch(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        rows: list[tuple[Any, ...]] = await self._run(
            lambda: self._conn().execute(sql, args).fetchall()
        )
        return rows

    async def prune(self, now: float) -> None:
        cutoff = now - self._cfg.retention
        keep = self._cfg.rejected_keep

        def work() -> None:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM records WHERE received_at < ?", (cutoff,))
                db.execute("DELETE FROM rollups WHERE minute < ?", (cutoff,))
                db.execute("DELETE FROM partials WHERE minute < ?", (cutoff,))
                db.execute("DELETE FROM feedback WHERE received_at < ?", (cutoff,))
                prune_ids(db, self._keep_ids)
                db.execute(
                    "DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - ?", (keep,)
                )

        try:
            await self._run(work)
        except sqlite3.Error as exc:
            log.error("store_prune_failed", error=str(exc))

    async def get_record(self, record_id: str) -> dict[str, Any] | None:
        def work() -> dict[str, Any] | None:
            rows = dict_rows(
                self._conn().execute("SELECT * FROM records WHERE id = ?", (record_id,))
            )
            return rows[0] if rows else None

        return await self._run(work)

    async def rollups(
        self, since: float, app: str | None = None, series: str | None = None
    ) -> list[RollupPoint]:
        sql, args = rollups_query(since, app, series, "?")
        rows = await self._run(lambda: self._conn().execute(sql, args).fetchall())
        return [RollupPoint(*row) for row in rows]

    async def rollup_means(
        self, since: float, step_s: float, until: float = float("inf")
    ) -> list[RollupPoint]:
        sql = (
            "SELECT CAST((minute - ?1) / ?2 AS INTEGER) AS bucket, app, series, AVG(value)"
            " FROM rollups WHERE minute >= ?1 AND minute < ?3 AND model = '*'"
            " GROUP BY bucket, app, series"
        )
        args = (since, step_s, min(until, 1e18))  # SQLite has no infinity literal to bind
        rows = await self._run(lambda: self._conn().execute(sql, args).fetchall())
        return [RollupPoint(int(since + b * step_s), app, "*", name, v) for b, app, name, v in rows]

    async def partials(
        self,
        since: float,
        until: float = float("inf"),
        app: str | None = None,
        *,
        node: str | None = None,
    ) -> list[PartialRow]:
        sql = "SELECT * FROM partials WHERE minute >= ? AND minute < ?"
        args: list[Any] = [since, min(until, 1e18)]
        if app is not None:
            sql += " AND app = ?"
            args.append(app)
        rows = await self._run(
            lambda: self._conn().execute(sql + " ORDER BY minute", args).fetchall()
        )
        return [PartialRow(*row) for row in rows]

    async def recent_ids(self, limit: int) -> list[tuple[str, str]]:
        return await self._run(lambda: recent_ids(self._conn(), limit))

    async def rejected(self, limit: int = 100) -> list[RejectedSample]:
        sql = "SELECT at, source, reason, detail, sample FROM rejected ORDER BY id DESC LIMIT ?"
        rows = await self._run(lambda: self._conn().execute(sql, (limit,)).fetchall())
        return [RejectedSample(*row) for row in rows]

    async def recent_flagged(self, limit: int = 20) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, ts, app, model, prompt, response, ood_score, flags FROM records"
            " WHERE ood_score IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(flags, '$.ood') f"
            " WHERE json_extract(f.value, '$.flagged')) ORDER BY received_at DESC LIMIT ?"
        )

        return await self._run(lambda: dict_rows(self._conn().execute(sql, (limit,))))

    async def count_records(self) -> int:
        row = await self._run(
            lambda: self._conn().execute("SELECT COUNT(*) FROM records").fetchone()
        )
        return int(row[0])

    async def writable(self) -> bool:
        def probe() -> bool:
            with self._conn() as db:
                db.execute("BEGIN IMMEDIATE")
            return True

        try:
            async with asyncio.timeout(2.0):
                return await self._run(probe)
        except (sqlite3.Error, StoreError, TimeoutError):
            return False
