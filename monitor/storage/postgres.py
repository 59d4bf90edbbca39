"""PostgreSQL store (psycopg 3, async): group commits (committer.py) through a bounded pool,
retention, and the queries; the same semantics as the SQLite store.

The committer writes on one pooled connection at a time (one group in flight); reads take the
others. Connections use TCP keepalives and a user timeout, so a dead server or a cut link is
noticed in seconds and the group retried on a new connection, not waited on for minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
import structlog
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from lookout.errors import StoreError
from lookout.monitor.config.masking import mask_url
from lookout.monitor.storage import pg_cluster, pg_groups, pg_leases, pg_partials
from lookout.monitor.storage.base import PartialRow, RejectedSample, RollupPoint, rollups_query
from lookout.monitor.storage.committer import GroupCommitStore
from lookout.monitor.storage.feedback import StoreFeedback
from lookout.monitor.storage.pg_outbox import Fenced, PgOutbox
from lookout.monitor.storage.schema import migrate_postgres

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

    from psycopg import AsyncConnection

    from lookout.clock import Clock
    from lookout.monitor.config import StoreConfig
    from lookout.monitor.metrics.prom import IngestMetrics
    from lookout.monitor.storage.groups import CommitGroup
    from lookout.monitor.storage.nodes import FencedRole, NodeRow

log = structlog.get_logger(__name__)
T = TypeVar("T")

# libpq connection parameters: a dead peer is noticed after ~25 s idle (10 + 3 x 5) and a
# write unanswered for 30 s fails, instead of hanging on the kernel's two-hour default.
_CONNECTION = {
    "application_name": "lookout",
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}
_COMMIT_KEYS_KEEP_S = 3600.0
_WRITER_IDLE_S = 30.0  # the committer's connection unused this long is checked before use


class PostgresStore(GroupCommitStore):
    _db_errors = (psycopg.Error,)

    def __init__(
        self,
        cfg: StoreConfig,
        metrics: IngestMetrics,
        clock: Clock,
        *,
        keep_ids: int = 100_000,
        node: str = "",
    ) -> None:
        super().__init__(cfg, metrics, clock, keep_ids=keep_ids)
        self._node = node
        self._where = mask_url(cfg.url)
        self._pool = AsyncConnectionPool(
            cfg.url,
            min_size=1,
            max_size=cfg.pool_size,
            kwargs={
                **_CONNECTION,
                "autocommit": True,
                "connect_timeout": max(1, round(cfg.connect_timeout_s)),
            },
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=cfg.connect_timeout_s,
            name="lookout-store",
        )
        self.feedback = StoreFeedback(self.put_feedback, self._fetch, "%s")
        self._retention: FencedRole | None = None
        self._totals = pg_partials.WriterPartials()
        self._writer: AsyncConnection[Any] | None = None
        self._writer_used_at = 0.0
        # The group being committed and its partials' totals, kept for its retries.
        self._prepared: tuple[CommitGroup, list[pg_partials.WriterRow]] | None = None

    def use_retention_role(self, role: FencedRole) -> None:
        self._retention = role

    async def _open_backend(self) -> None:
        try:
            await self._pool.open(wait=True, timeout=self._cfg.connect_timeout_s)
            async with self._pool.connection() as conn:
                version = await migrate_postgres(conn)
        except psycopg.Error as exc:
            await self._pool.close()
            raise StoreError(f"cannot open the PostgreSQL store at {self._where}: {exc}") from exc
        except BaseException:
            await self._pool.close()
            raise
        log.info("store_opened", url=self._where, schema_version=version)

    async def _close_backend(self) -> None:
        if self._writer is not None:
            conn, self._writer = self._writer, None
            await self._pool.putconn(conn)
        await self._pool.close()

    async def _write(self, group: CommitGroup) -> int:
        at, keep = self._clock.now(), self._cfg.rejected_sample_bytes
        if self._prepared is None or self._prepared[0] is not group:
            if self._prepared is not None:
                # A group given up (cancelled, or abandoned while closing) may have committed:
                # its minutes' totals are unknown, so they go on under new writer ids.
                self._totals.forget(self._prepared[1])
            self._prepared = (group, self._totals.advance(group.partials))
        totals = self._prepared[1]
        refused = 0
        async with self._writer_connection() as conn:
            try:
                await pg_groups.write_group(conn, group, self._node, at, totals)
            except psycopg.Error as exc:
                if pg_groups.transient(exc):
                    raise
                log.warning("store_group_refused", error=str(exc), rows=group.rows)
                refused = await pg_groups.write_group_row_by_row(
                    conn, group, self._node, at, totals, keep
                )
        self._totals.settle(totals)
        self._prepared = None
        return refused

    @contextlib.asynccontextmanager
    async def _writer_connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """The committer's connection, kept from one group to the next: no check (a round
        trip) per group, only after a quiet spell (when a server or a firewall may have closed
        it). A write that fails on it gives it back to the pool, which drops it if it is
        broken; the retry takes a checked one."""
        now = self._clock.now()
        if self._writer is not None and now - self._writer_used_at > _WRITER_IDLE_S:
            conn, self._writer = self._writer, None
            await self._pool.putconn(conn)
        if self._writer is None:
            self._writer = await self._pool.getconn()
        self._writer_used_at = now
        try:
            yield self._writer
        except BaseException:
            conn, self._writer = self._writer, None
            await self._pool.putconn(conn)
            raise

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection (autocommit) for the storage layer's other tables (the judge's);
        the driver's errors as StoreError."""
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store at {self._where}: {exc}") from exc

    async def _use(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        """`work` on a pooled connection; the driver's errors as StoreError."""
        async with self.connection() as conn:
            return await work(conn)

    async def _fetch(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        async def work(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

        return await self._use(work)

    async def _fetch_dicts(self, sql: str, args: Any) -> list[dict[str, Any]]:
        async def work(conn: AsyncConnection[Any]) -> list[dict[str, Any]]:
            async with conn.cursor(row_factory=dict_row) as cur:
                await cur.execute(sql, args)
                return await cur.fetchall()

        return await self._use(work)

    async def prune(self, now: float) -> None:
        cutoff = now - self._cfg.retention

        async def work(conn: AsyncConnection[Any]) -> None:
            async with conn.transaction():  # nested in fenced()'s: a savepoint
                await conn.execute("DELETE FROM records WHERE received_at < %s", (cutoff,))
                await conn.execute("DELETE FROM rollups WHERE minute < %s", (cutoff,))
                await conn.execute("DELETE FROM partials WHERE minute < %s", (cutoff,))
                await conn.execute("DELETE FROM feedback WHERE received_at < %s", (cutoff,))
                await conn.execute("DELETE FROM nodes WHERE heartbeat_at < %s", (cutoff,))
                await conn.execute(
                    "DELETE FROM commit_groups WHERE at < %s", (now - _COMMIT_KEYS_KEEP_S,)
                )
                await conn.execute(pg_groups.PRUNE_IDS, (self._keep_ids,))
                await conn.execute(
                    "DELETE FROM rejected WHERE id <= (SELECT MAX(id) FROM rejected) - %s",
                    (self._cfg.rejected_keep,),
                )

        try:
            if self._retention is None:
                await self._use(work)
            elif self._retention.held:  # a cluster: the role's holder, on its lock's session
                async with self._retention.fenced() as conn:
                    await work(conn)
        except (psycopg.Error, StoreError) as exc:  # NotLeader too: lost the role meanwhile
            log.error("store_prune_failed", error=str(exc))

    async def get_record(self, record_id: str) -> dict[str, Any] | None:
        rows = await self._fetch_dicts("SELECT * FROM records WHERE id = %s LIMIT 1", (record_id,))
        return rows[0] if rows else None

    async def rollups(
        self, since: float, app: str | None = None, series: str | None = None
    ) -> list[RollupPoint]:
        sql, args = rollups_query(since, app, series, "%s")
        rows = await self._fetch(sql, args)
        return [RollupPoint(*row) for row in rows]

    async def rollup_means(
        self, since: float, step_s: float, until: float = float("inf")
    ) -> list[RollupPoint]:
        sql = (
            "SELECT FLOOR((minute - %(since)s) / %(step)s)::bigint AS bucket, app, series,"
            " AVG(value) FROM rollups WHERE minute >= %(since)s AND minute < %(until)s"
            " AND model = '*' GROUP BY bucket, app, series"
        )
        args = {"since": since, "step": step_s, "until": min(until, 1e18)}
        rows = await self._fetch(sql, args)
        return [RollupPoint(int(since + b * step_s), app, "*", name, v) for b, app, name, v in rows]

    async def partials(
        self,
        since: float,
        until: float = float("inf"),
        app: str | None = None,
        *,
        node: str | None = None,
    ) -> list[PartialRow]:
        """The nodes' rows of each minute merged into one."""
        sql = (
            "SELECT minute, app, model, count, errors, output_tokens, tokens, token_records,"
            " cost, latency_s, ttft_s, gen_tps FROM partials WHERE minute >= %s AND minute < %s"
        )
        args: list[Any] = [since, min(until, 1e18)]
        if app is not None:
            sql += " AND app = %s"
            args.append(app)
        if node is not None:
            sql += " AND node = %s"
            args.append(node)
        rows = await self._fetch(sql + " ORDER BY minute, app, model, node", args)
        return pg_partials.merged_by_minute(rows)

    async def peer_partials(self, since: float) -> list[PartialRow]:
        """The other nodes' minutes from `since`, merged (the cluster's windows read them)."""
        return await self._use(lambda conn: pg_cluster.peer_partials(conn, since, self._node))

    async def beat(self, row: NodeRow) -> None:
        await self._use(lambda conn: pg_cluster.beat(conn, row))

    async def nodes(self) -> list[NodeRow]:
        return await self._use(pg_cluster.nodes)

    def outbox(
        self, *, fenced: Fenced | None = None, send_timeout_s: Mapping[str, float] | None = None
    ) -> PgOutbox:
        """The alerting tables on this store's pool; `fenced`: the alert role's transactions."""
        return PgOutbox(self._use, node=self._node, fenced=fenced, send_timeout_s=send_timeout_s)

    async def role_holders(self) -> dict[int, str]:
        return await self._use(pg_leases.role_holders)

    async def recent_ids(self, limit: int) -> list[tuple[str, str]]:
        return await self._use(lambda conn: pg_groups.recent_ids(conn, limit))

    async def rejected(self, limit: int = 100) -> list[RejectedSample]:
        sql = "SELECT at, source, reason, detail, sample FROM rejected ORDER BY id DESC LIMIT %s"
        rows = await self._fetch(sql, (limit,))
        return [RejectedSample(a, src, why, detail, bytes(s)) for a, src, why, detail, s in rows]

    async def recent_flagged(self, limit: int = 20) -> list[dict[str, Any]]:
        sql = (
            "SELECT id, ts, app, model, prompt, response, ood_score, flags FROM records"
            " WHERE ood_score IS NOT NULL AND EXISTS (SELECT 1 FROM jsonb_each(CASE"
            " WHEN jsonb_typeof(flags::jsonb -> 'ood') = 'object' THEN flags::jsonb -> 'ood'"
            " ELSE '{}' END) f WHERE f.value ->> 'flagged' = 'true')"
            " ORDER BY received_at DESC LIMIT %s"
        )
        return await self._fetch_dicts(sql, (limit,))

    async def count_records(self) -> int:
        (row,) = await self._fetch("SELECT COUNT(*) FROM records")
        return int(row[0])

    async def writable(self) -> bool:
        try:
            async with asyncio.timeout(2.0):
                (row,) = await self._fetch("SHOW transaction_read_only")
        except (StoreError, TimeoutError):
            return False
        return bool(row[0] == "off")
