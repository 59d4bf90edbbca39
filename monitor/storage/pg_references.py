"""References, drift window checkpoints and shared drift samples in PostgreSQL: what every
node of a cluster loads (references.py has the SQLite twin and the `References` protocol;
drift_samples.py says what the samples are for).

A reference is saved on the REFERENCES role's own session when a fence is given
(`fenced`, monitor/cluster/leadership.py): a node that lost the role cannot add a version."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Self, TypeVar

import numpy as np
import psycopg
from psycopg_pool import AsyncConnectionPool

from lookout.errors import StoreError
from lookout.monitor.config.masking import mask_url
from lookout.monitor.storage.drift_samples import DriftSample
from lookout.monitor.storage.references import (
    COLUMNS,
    Infos,
    Reference,
    ReferenceInfo,
    Snapshots,
    WindowSnapshot,
    info_of,
    pack,
    unpack,
)

if TYPE_CHECKING:
    from types import TracebackType

    from psycopg import AsyncConnection

    from lookout.detectors.arrays import States

T = TypeVar("T")
Fence = Callable[[], contextlib.AbstractAsyncContextManager[Any]]
Use = Callable[[Callable[["AsyncConnection[Any]"], Awaitable[Any]]], Awaitable[Any]]

_SAVE = (
    "INSERT INTO detector_refs (app, field, version, created_at, source, embedder, size,"
    " active, drift_threshold, ood_threshold, states, texts) VALUES (%s, %s, (SELECT"
    " COALESCE(MAX(version), 0) + 1 FROM detector_refs WHERE app = %s AND field = %s),"
    " %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id"
)
_SAMPLE_COLUMNS = "id, node, app, field, ref_id, at, flagged, dim, embeddings"
_AFTER = (
    f"SELECT {_SAMPLE_COLUMNS} FROM drift_samples s WHERE node <> %s AND id > COALESCE("
    "(SELECT c FROM unnest(%s::text[], %s::bigint[]) AS u(n, c) WHERE u.n = s.node), %s)"
    " ORDER BY id LIMIT %s"
)
# Rows whose newer rows of the same (app, field) [and node] already hold `texts` texts.
_NEWER = "SUM(n) OVER (PARTITION BY app, field{by} ORDER BY id DESC) - n"
_LATEST = (
    f"SELECT {_SAMPLE_COLUMNS} FROM drift_samples WHERE id IN (SELECT id FROM (SELECT id,"
    f" {_NEWER.format(by='')} AS newer FROM drift_samples) r WHERE newer < %s) ORDER BY id"
)
_PRUNE = (
    "DELETE FROM drift_samples WHERE node = %s AND (at < %s OR id IN (SELECT id FROM (SELECT"
    f" id, {_NEWER.format(by=', node')} AS newer FROM drift_samples WHERE node = %s) r"
    " WHERE newer >= %s)) RETURNING n"
)


def _sample(row: tuple[Any, ...]) -> DriftSample:
    ident, node, app, field, ref_id, at, flagged, dim, blob = row
    x = np.frombuffer(bytes(blob), dtype=np.float16).reshape(-1, int(dim))
    return DriftSample(node, app, field, int(ref_id), float(at), int(flagged), x, int(ident))


class PgReferenceStore:
    """`References` (and `samples`, the shared drift samples) on a small pool of its own."""

    def __init__(
        self,
        url: str,
        *,
        node: str = "",
        connect_timeout_s: float = 10.0,
        fence: Fence | None = None,
    ) -> None:
        self._where = mask_url(url)
        self._node = node
        self._fence = fence
        self._connect_timeout_s = connect_timeout_s
        self._pool = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=2,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(connect_timeout_s))},
            open=False,
            check=AsyncConnectionPool.check_connection,
            timeout=connect_timeout_s,
            name="lookout-references",
        )
        self.samples = PgDriftSamples(self._use, node)

    async def __aenter__(self) -> Self:
        try:
            await self._pool.open(wait=True, timeout=self._connect_timeout_s)
        except psycopg.Error as exc:
            await self._pool.close()
            raise StoreError(f"cannot open references at {self._where}: {exc}") from exc
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._pool.close()

    async def _use(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
        try:
            async with self._pool.connection() as conn:
                return await work(conn)
        except psycopg.Error as exc:
            raise StoreError(f"references at {self._where}: {exc}") from exc

    async def _rows(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        async def work(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            return await (await conn.execute(sql, args)).fetchall()

        return await self._use(work)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A transaction: on the role's session when fenced (NotLeader if it is not held)."""
        if self._fence is not None:
            try:
                async with self._fence() as conn:
                    yield conn
            except psycopg.Error as exc:
                raise StoreError(f"references at {self._where}: {exc}") from exc
            return
        try:
            async with self._pool.connection() as conn, conn.transaction():
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"references at {self._where}: {exc}") from exc

    async def save(
        self,
        *,
        app: str,
        field: str,
        source: str,
        embedder: str,
        size: int,
        states: States,
        texts: list[str],
        now: float,
        drift_threshold: float | None,
        ood_threshold: float | None,
        activate: bool = True,
    ) -> ReferenceInfo:
        async with self._writing() as conn:
            # One writer per table at a time: versions are numbered without gaps or twins.
            await conn.execute("LOCK TABLE detector_refs IN SHARE ROW EXCLUSIVE MODE")
            if activate:
                await conn.execute(
                    "UPDATE detector_refs SET active = false WHERE app = %s AND field = %s",
                    (app, field),
                )
            args = (app, field, app, field, now, source, embedder, size, activate)
            thresholds = (drift_threshold, ood_threshold, pack(states), json.dumps(texts))
            cur = await conn.execute(_SAVE, (*args, *thresholds))
            row = await cur.fetchone()
            assert row is not None
        info = await self.info(int(row[0]))
        assert info is not None
        return info

    async def list(self) -> Infos:
        rows = await self._rows(f"SELECT {COLUMNS} FROM detector_refs ORDER BY app, field, version")
        return [info_of(r) for r in rows]

    async def info(self, ref_id: int) -> ReferenceInfo | None:
        rows = await self._rows(f"SELECT {COLUMNS} FROM detector_refs WHERE id = %s", (ref_id,))
        return info_of(rows[0]) if rows else None

    async def active_ids(self) -> dict[tuple[str, str], int]:
        rows = await self._rows("SELECT app, field, id FROM detector_refs WHERE active")
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def load(self, ref_id: int) -> Reference | None:
        sql = f"SELECT {COLUMNS}, states, texts FROM detector_refs WHERE id = %s"
        rows = await self._rows(sql, (ref_id,))
        if not rows:
            return None
        row = rows[0]
        return Reference(info_of(row[:11]), unpack(bytes(row[11])), json.loads(row[12]))

    async def activate(self, ref_id: int) -> ReferenceInfo | None:
        async def work(conn: AsyncConnection[Any]) -> bool:
            async with conn.transaction():
                # Off first, then on: the one-active index is checked row by row.
                await conn.execute(
                    "UPDATE detector_refs SET active = false WHERE active AND (app, field) ="
                    " (SELECT app, field FROM detector_refs WHERE id = %s)",
                    (ref_id,),
                )
                cur = await conn.execute(
                    "UPDATE detector_refs SET active = true WHERE id = %s", (ref_id,)
                )
                return cur.rowcount > 0

        if not await self._use(work):
            return None
        return await self.info(ref_id)

    async def save_windows(self, windows: Snapshots, now: float) -> None:
        rows = [
            (
                w.app,
                w.field,
                w.ref_id,
                now,
                pack({"x": w.embeddings, "ood": w.ood}),
                json.dumps(w.texts),
            )
            for w in windows
        ]

        async def work(conn: AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO detector_windows VALUES (%s, %s, %s, %s, %s, %s)"
                    " ON CONFLICT (app, field) DO UPDATE SET ref_id = excluded.ref_id,"
                    " saved_at = excluded.saved_at, embeddings = excluded.embeddings,"
                    " texts = excluded.texts",
                    rows,
                )

        await self._use(work)

    async def load_windows(self, since: float) -> Snapshots:
        sql = (
            "SELECT app, field, ref_id, embeddings, texts FROM detector_windows"
            " WHERE saved_at >= %s"
        )
        out = []
        for app, field, ref_id, blob, texts in await self._rows(sql, (since,)):
            arrays = unpack(bytes(blob))
            x, ood = arrays["x"].astype(np.float32), arrays["ood"].astype(np.int64)
            out.append(WindowSnapshot(app, field, int(ref_id), x, json.loads(texts), ood))
        return out


class PgDriftSamples:
    """`DriftSamples` (drift_samples.py) in the `drift_samples` table."""

    def __init__(self, use: Use, node: str) -> None:
        self._use, self._node = use, node

    async def put(self, samples: Sequence[DriftSample]) -> None:
        rows = [
            (
                self._node,
                s.app,
                s.field,
                s.ref_id,
                s.at,
                s.n,
                s.flagged,
                s.embeddings.shape[1],
                s.embeddings.astype(np.float16).tobytes(),
            )
            for s in samples
        ]

        async def work(conn: AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO drift_samples (node, app, field, ref_id, at, n, flagged, dim,"
                    " embeddings) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    rows,
                )

        if rows:
            await self._use(work)

    async def _select(self, sql: str, args: Any) -> list[DriftSample]:
        async def work(conn: AsyncConnection[Any]) -> list[DriftSample]:
            return [_sample(r) for r in await (await conn.execute(sql, args)).fetchall()]

        result: list[DriftSample] = await self._use(work)
        return result

    async def after(self, cursors: dict[str, int], floor: int, limit: int) -> list[DriftSample]:
        nodes = list(cursors)
        args = (self._node, nodes, [cursors[n] for n in nodes], floor, limit)
        return await self._select(_AFTER, args)

    async def latest(self, texts: int) -> list[DriftSample]:
        return await self._select(_LATEST, (texts,))

    async def prune(self, before: float, keep_texts: int) -> int:
        async def work(conn: AsyncConnection[Any]) -> int:
            cur = await conn.execute(_PRUNE, (self._node, before, self._node, keep_texts))
            return sum(int(r[0]) for r in await cur.fetchall())

        result: int = await self._use(work)
        return result
