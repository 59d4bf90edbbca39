"""SQLite store (WAL): one writer thread, batched writes, retention.

Every database call runs on one dedicated thread, so the event loop never waits on disk and
SQLite's single-writer rule holds by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import msgspec
import structlog

from lookout.errors import StoreError
from lookout.monitor.storage.base import RejectedSample, RollupPoint, sqlite_path
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
    id TEXT PRIMARY KEY, ts REAL NOT NULL, received_at REAL NOT NULL, app TEXT NOT NULL,
    model TEXT NOT NULL, provider TEXT, status TEXT NOT NULL, latency_ms REAL, ttft_ms REAL,
    input_tokens INTEGER, output_tokens INTEGER, cost REAL, prompt TEXT, response TEXT,
    error TEXT, user_id TEXT, session_id TEXT, metadata TEXT, ood_score REAL, flags TEXT
);
CREATE INDEX IF NOT EXISTS records_app_ts ON records (app, ts);
CREATE INDEX IF NOT EXISTS records_received ON records (received_at);
CREATE TABLE IF NOT EXISTS rollups (
    minute INTEGER NOT NULL, app TEXT NOT NULL, model TEXT NOT NULL, series TEXT NOT NULL,
    value REAL NOT NULL, PRIMARY KEY (minute, app, model, series)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, source TEXT NOT NULL,
    reason TEXT NOT NULL, detail TEXT NOT NULL, sample BLOB NOT NULL
);
"""
_RECORD_COLUMNS = (
    "id, ts, received_at, app, model, provider, status, latency_ms, ttft_ms, input_tokens, "
    "output_tokens, cost, prompt, response, error, user_id, session_id, metadata"
)
_INSERT_RECORDS = (
    f"INSERT OR IGNORE INTO records ({_RECORD_COLUMNS}) SELECT "
    + ", ".join(f"value->>{i}" for i in range(18))
    + " FROM json_each(?)"
)
_INSERT_RECORD_VALUES = (
    f"INSERT OR IGNORE INTO records ({_RECORD_COLUMNS}) VALUES ({', '.join('?' * 18)})"
)
_FLUSH_AT_ROWS = 1000
_ROWS_PER_STATEMENT = 1000
_FLUSH_AT_BYTES = 4 * 1024 * 1024
_ROW_OVERHEAD_BYTES = 100
_encode_row = msgspec.json.Encoder().encode
_PRUNE_EVERY_S = 60.0


class SqliteStore:
    def __init__(self, cfg: StoreConfig, metrics: IngestMetrics, clock: Clock) -> None:
        self._cfg = cfg
        self._sql = SqliteThread(
            sqlite_path(cfg.url), schema=_SCHEMA, synchronous="NORMAL", name="lookout-sqlite"
        )
        self._run = self._sql.run
        self._conn = self._sql.conn
        self._metrics = metrics
        self._clock = clock
        self._records: list[bytes] = []
        self._scores: list[tuple[str, float, str]] = []
        self._rejected: list[tuple[Any, ...]] = []
        self._rollups: list[tuple[Any, ...]] = []
        self._pending = 0
        self._pending_bytes = 0
        self._wake = asyncio.Event()
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
        # Unwound in reverse: the flusher stops, then the last rows are written and it closes.
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
            tg.create_task(self._flusher(), name="store-flusher")
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

    def _admit(self, size_bytes: int = _ROW_OVERHEAD_BYTES) -> bool:
        """Room for one more row? The buffer is bounded in rows and in bytes."""
        cfg = self._cfg
        if self._pending >= cfg.queue_size or self._pending_bytes >= cfg.buffer_bytes:
            self._metrics.dropped.labels("store").inc()
            return False
        self._pending += 1
        self._pending_bytes += size_bytes
        if self._pending >= _FLUSH_AT_ROWS or self._pending_bytes >= _FLUSH_AT_BYTES:
            self._wake.set()
        return True

    def _new_id(self) -> str:
        # A random per-process prefix and a counter: unique, and far cheaper than uuid4.
        self._id_seq += 1
        return f"{self._id_prefix}{self._id_seq:x}"

    def put_record(self, record: Record, cost: float) -> str | None:
        r = record
        record_id = r.id or self._new_id()
        # Encoded here, one row at a time (~1 us): the writer thread then needs the GIL only
        # to join bytes, and the buffer is measured in the bytes it really holds.
        row = _encode_row(
            (
                record_id,
                r.ts,
                r.received_at,
                r.app,
                r.model,
                r.provider,
                r.status,
                r.latency_ms,
                r.ttft_ms,
                r.input_tokens,
                r.output_tokens,
                cost,
                r.prompt,
                r.response,
                r.error,
                r.user_id,
                r.session_id,
                r.metadata,
            )
        )
        if not self._admit(len(row) + _ROW_OVERHEAD_BYTES):
            return None
        self._records.append(row)
        return record_id

    def put_scores(self, rows: list[tuple[str, float, str]]) -> None:
        """(record id, OOD score, flags as a JSON object merged into the record's flags)."""
        for row in rows:
            if self._admit():
                self._scores.append(row)

    def put_rejected(self, rejection: Rejection, source: str, at: float) -> None:
        if self._admit():
            sample = rejection.sample[: self._cfg.rejected_sample_bytes]
            self._rejected.append((at, source, rejection.reason.value, rejection.detail, sample))

    def put_rollups(self, points: list[RollupPoint]) -> None:
        for p in points:
            if self._admit():
                self._rollups.append((p.minute, p.app, p.model, p.series, p.value))

    async def flush(self) -> None:
        async with self._flush_lock:
            records, rejected, rollups = self._records, self._rejected, self._rollups
            scores = self._scores
            if not (records or rejected or rollups or scores):
                return
            self._records, self._rejected, self._rollups, self._scores = [], [], [], []
            self._pending = self._pending_bytes = 0
            try:
                await self._run(lambda: self._write(records, rejected, rollups, scores))
            except sqlite3.Error as exc:
                self._metrics.store_errors.inc()
                self._metrics.dropped.labels("store").inc(
                    len(records) + len(rejected) + len(rollups) + len(scores)
                )
                log.error("store_write_failed", error=str(exc), rows=len(records))
                return
            self._metrics.store_writes.labels("records").inc(len(records))
            self._metrics.store_writes.labels("rejected").inc(len(rejected))
            self._metrics.store_writes.labels("rollups").inc(len(rollups))

    def _write(
        self,
        records: list[bytes],
        rejected: list[tuple[Any, ...]],
        rollups: list[tuple[Any, ...]],
        scores: list[tuple[str, float, str]],
    ) -> None:
        db = self._conn()
        with db:
            db.execute("BEGIN")
            if nul_rows := [row for row in records if b"\\u0000" in row]:
                # SQLite's JSON functions cut text at a NUL: bind these rows' values instead.
                records = [row for row in records if b"\\u0000" not in row]
                db.executemany(_INSERT_RECORD_VALUES, map(msgspec.json.decode, nul_rows))
            if records:
                # One statement per chunk of rows: SQLite unpacks the JSON array in C with
                # the GIL released, where executemany would take the GIL back for every row
                # and crawl (~1 ms a row) while the ingest loop keeps the GIL busy. Chunks
                # keep SQLite's JSON parse small.
                for i in range(0, len(records), _ROWS_PER_STATEMENT):
                    blob = b"[" + b",".join(records[i : i + _ROWS_PER_STATEMENT]) + b"]"
                    db.execute(_INSERT_RECORDS, (blob,))
            if rejected:
                db.executemany(
                    "INSERT INTO rejected (at, source, reason, detail, sample) VALUES (?,?,?,?,?)",
                    rejected,
                )
            if rollups:
                db.executemany("INSERT OR REPLACE INTO rollups VALUES (?,?,?,?,?)", rollups)
            if scores:
                # A record's fields are scored separately: keep the highest score, merge flags.
                db.executemany(
                    "UPDATE records SET ood_score = MAX(COALESCE(ood_score, ?2), ?2),"
                    " flags = json_patch(COALESCE(flags, '{}'), ?3) WHERE id = ?1",
                    scores,
                )

    async def prune(self, now: float) -> None:
        cutoff = now - self._cfg.retention
        keep = self._cfg.rejected_keep

        def work() -> None:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.execute("DELETE FROM records WHERE received_at < ?", (cutoff,))
                db.execute("DELETE FROM rollups WHERE minute < ?", (cutoff,))
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
