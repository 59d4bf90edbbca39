"""SQLite store (WAL): one writer thread, group commits, retention.

Every database call runs on one dedicated thread, so the event loop never waits on disk and
SQLite's single-writer rule holds by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import structlog

from lookout.errors import StoreError
from lookout.monitor.storage import feedback as feedback_table
from lookout.monitor.storage.base import PartialRow, RejectedSample, RollupPoint, sqlite_path
from lookout.monitor.storage.groups import (
    CommitGroup,
    encode_record_row,
    prune_ids,
    recent_ids,
    write_group,
)
from lookout.sqlite_thread import SqliteThread, dict_rows

if TYPE_CHECKING:
    from types import TracebackType

    from lookout.clock import Clock
    from lookout.monitor.config import StoreConfig
    from lookout.monitor.ingest.records import Record, Rejection
    from lookout.monitor.metrics.prom import IngestMetrics

log = structlog.get_logger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id TEXT NOT NULL, ts REAL NOT NULL, received_at REAL NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, provider TEXT, status TEXT NOT NULL, latency_ms REAL, ttft_ms REAL,
    input_tokens INTEGER, output_tokens INTEGER, cost REAL, prompt TEXT, response TEXT,
    error TEXT, user_id TEXT, session_id TEXT, metadata TEXT, ood_score REAL, flags TEXT,
    PRIMARY KEY (app, id)
);
CREATE INDEX IF NOT EXISTS records_id ON records (id);
CREATE INDEX IF NOT EXISTS records_app_ts ON records (app, ts);
CREATE INDEX IF NOT EXISTS records_received ON records (received_at);
CREATE TABLE IF NOT EXISTS rollups (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, series TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (minute, app, model, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS partials (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, count INTEGER NOT NULL,
    errors INTEGER NOT NULL, output_tokens INTEGER NOT NULL, tokens INTEGER NOT NULL,
    token_records INTEGER NOT NULL, cost REAL NOT NULL, latency_s BLOB, ttft_s BLOB,
    gen_tps BLOB, PRIMARY KEY (minute, app, model)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seen_ids (n INTEGER NOT NULL, ids BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, sample BLOB NOT NULL
);
"""
_SCHEMA += feedback_table.FEEDBACK_SCHEMA
_COMMIT_AT_BYTES = 4 * 1024 * 1024
_ROW_OVERHEAD_BYTES = 100
_PRUNE_EVERY_S = 60.0
_RETRY_MAX_S = 5.0
_ATTEMPTS_WHEN_CLOSING = 3


class SqliteStore:
    def __init__(
        self,
        cfg: StoreConfig,
        metrics: IngestMetrics,
        clock: Clock,
        *,
        keep_ids: int = 100_000,
    ) -> None:
        self._cfg = cfg
        self._sql = SqliteThread(
            sqlite_path(cfg.url), schema=_SCHEMA, synchronous="NORMAL", name="lookout-sqlite"
        )
        self._run = self._sql.run
        self._conn = self._sql.conn
        self.feedback = feedback_table.SqliteFeedback(
            self._run, self._conn, self._admit, lambda: self._group.feedback
        )
        self._metrics = metrics
        self._clock = clock
        self._keep_ids = keep_ids
        self._group = CommitGroup()
        self._committing = CommitGroup()  # the group being written, for the buffer's bound
        self._closers: list[Callable[[], None]] = []
        self._commit_at_callbacks = 1 << 30  # see set_ack_window
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._stop = asyncio.Event()
        self._stack = contextlib.AsyncExitStack()
        self._flush_lock = asyncio.Lock()
        self._last_prune = 0.0
        self._id_prefix = uuid.uuid4().hex[:16]
        self._id_seq = 0

    async def __aenter__(self) -> SqliteStore:
        try:
            await self._sql.open()
        except (sqlite3.Error, OSError) as exc:
            raise StoreError(f"cannot open SQLite store at {self._sql.path}: {exc}") from exc
        self._stack = contextlib.AsyncExitStack()
        # Unwound in reverse: the committer stops, then the last group is written and it closes.
        self._stack.push_async_callback(self._close)
        await self._stack.enter_async_context(self._flushing())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def _flushing(self) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._flusher(), name="store-committer")
            try:
                yield
            finally:
                self._stop.set()
                self._wake.set()

    async def _close(self) -> None:
        await self.flush()
        await self._sql.close()

    async def _flusher(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._cfg.flush_interval_s)
            self._wake.clear()
            await self.flush()
            now = self._clock.now()
            if now - self._last_prune >= _PRUNE_EVERY_S:
                self._last_prune = now
                await self.prune(now)

    # --- the open group -----------------------------------------------------------------

    def _admit(self, size_bytes: int = _ROW_OVERHEAD_BYTES) -> bool:
        """Room for one more row? Sources pause at the soft limit (`has_room`); only past the
        hard limit, which a paused source cannot reach, are rows dropped and counted."""
        group = self._group
        if group.rows + self._committing.rows >= self._cfg.queue_hard_limit:
            self._metrics.dropped.labels("store").inc()
            return False
        group.rows += 1
        group.bytes += size_bytes
        if group.rows >= self._cfg.commit_rows or group.bytes >= _COMMIT_AT_BYTES:
            self._wake.set()
        if self._room.is_set() and not self.has_room():
            self._room.clear()
        return True

    def has_room(self) -> bool:
        group, committing = self._group, self._committing
        return (
            group.rows + committing.rows < self._cfg.queue_size
            and group.bytes + committing.bytes < self._cfg.buffer_bytes
        )

    async def wait_room(self) -> None:
        while not self.has_room():
            self._wake.set()
            self._room.clear()
            await self._room.wait()

    def on_group_close(self, fn: Callable[[], None]) -> None:
        self._closers.append(fn)

    def set_ack_window(self, window: int) -> None:
        # The broker sends no more than `window` unacknowledged messages: commit as soon as
        # half of them wait, so acks flow back before it stops sending.
        self._commit_at_callbacks = max(1, window // 2)

    def after_commit(self, fn: Callable[[], None]) -> None:
        callbacks = self._group.callbacks
        callbacks.append(fn)
        if len(callbacks) >= self._commit_at_callbacks:
            self._wake.set()

    def committed(self) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def resolve() -> None:
            if not future.done():
                future.set_result(None)

        self.after_commit(resolve)
        return future

    def _new_id(self) -> str:
        # A random per-process prefix and a counter: unique, and far cheaper than uuid4.
        self._id_seq += 1
        return f"{self._id_prefix}{self._id_seq:x}"

    def put_record(self, record: Record, cost: float) -> str | None:
        record_id = record.id or self._new_id()
        # Encoded here, one row at a time (~1 us): the writer thread then needs the GIL only
        # to join bytes, and the buffer is measured in the bytes it really holds.
        row = encode_record_row(record, record_id, cost)
        if not self._admit(len(row) + _ROW_OVERHEAD_BYTES):
            return None
        self._group.records.append(row)
        return record_id

    def put_scores(self, rows: list[tuple[str, str, float, str]]) -> None:
        """(app, record id, OOD score, flags as a JSON object merged into the record's flags):
        ids are unique per app only."""
        for row in rows:
            if self._admit():
                self._group.scores.append(row)

    def put_rejected(self, rejection: Rejection, source: str, at: float) -> None:
        if self._admit():
            sample = rejection.sample[: self._cfg.rejected_sample_bytes]
            self._group.rejected.append(
                (at, source, rejection.reason.value, rejection.detail, sample)
            )

    def put_rollups(self, points: list[RollupPoint]) -> None:
        for p in points:
            if self._admit():
                self._group.rollups.append((p.minute, p.app, p.model, p.series, p.value))

    def put_partials(self, rows: list[PartialRow]) -> None:
        # Not bounded like rows: one per (app, model, minute) touched, and never dropped.
        self._group.partials += rows

    def put_seen_ids(self, ids: list[tuple[str, str]]) -> None:
        self._group.ids += ids

    # --- committing ---------------------------------------------------------------------

    async def flush(self) -> None:
        """Commit the open group now; then run its callbacks (acks, answers) in order."""
        async with self._flush_lock:
            for close in self._closers:
                close()
            group = self._group
            if group.empty():
                return
            self._group, self._committing = CommitGroup(), group
            try:
                if not await self._commit(group):
                    return  # given up while closing: not acknowledged, so redelivered
            finally:
                self._committing = CommitGroup()
                if self.has_room():
                    self._room.set()
            for callback in group.callbacks:
                callback()
            m = self._metrics.store_writes
            m.labels("records").inc(len(group.records))
            m.labels("rejected").inc(len(group.rejected))
            m.labels("rollups").inc(len(group.rollups))

    async def _commit(self, group: CommitGroup) -> bool:
        """Write the group, retrying with backoff: a transient error (disk full, a locked
        database) delays acknowledgements, it does not lose what they promise. A group that
        SQLite refuses for its content is written row by row, leaving out (and keeping as
        rejected samples) only the rows it refuses: one bad row must not stall ingest."""
        attempt = 0
        at, keep = self._clock.now(), self._cfg.rejected_sample_bytes  # for refused rows
        while True:
            try:
                refused = await self._run(lambda: write_group(self._conn(), group, at, keep))
                if refused:
                    self._metrics.dropped.labels("store").inc(refused)
                    log.error("store_rows_refused", rows=refused, of=group.rows)
                return True
            except sqlite3.Error as exc:
                self._metrics.store_errors.inc()
                log.error("store_write_failed", error=str(exc), rows=group.rows, attempt=attempt)
                attempt += 1
                if self._stop.is_set() and attempt >= _ATTEMPTS_WHEN_CLOSING:
                    self._metrics.dropped.labels("store").inc(group.rows)
                    return False
                await asyncio.sleep(min(0.1 * 2**attempt, _RETRY_MAX_S))

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
                feedback_table.prune_feedback(db, cutoff)
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
        sql = "SELECT minute, app, model, series, value FROM rollups WHERE minute >= ?"
        args: list[Any] = [since]
        if app is not None:
            sql += " AND app = ?"
            args.append(app)
        if series is not None:
            sql += " AND series = ?"
            args.append(series)
        sql += " ORDER BY minute"
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
        self, since: float, until: float = float("inf"), app: str | None = None
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
            return await asyncio.wait_for(self._run(probe), timeout=2.0)
        except (sqlite3.Error, StoreError, TimeoutError):
            return False
