"""Reference sets per (app, field), versioned: the embeddings' detector states (reference
statistics and calibration, so a restart never recalibrates) and a few reference texts for
explanations. One version per (app, field) is active. `References` is what the detectors and
`lookout baseline` need; `ReferenceStore` keeps them in SQLite beside the store (one node),
pg_references.py in PostgreSQL (a cluster, where every node loads them).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np
from numpy.typing import NDArray

from lookout.detectors.arrays import States
from lookout.monitor.storage.schema import migrate_sqlite
from lookout.sqlite_thread import SqliteBacked, SqliteThread


@dataclass(frozen=True, slots=True)
class ReferenceInfo:
    id: int
    app: str
    field: str
    version: int
    created_at: float
    source: str
    embedder: str
    size: int
    active: bool
    drift_threshold: float | None
    ood_threshold: float | None


@dataclass(frozen=True, slots=True)
class WindowSnapshot:
    """A drift window's embeddings (oldest first) and texts, and the OOD counts by time
    bucket (rows of bucket index, scored, flagged), as of the last checkpoint or stop."""

    app: str
    field: str
    ref_id: int
    embeddings: NDArray[np.float32]
    texts: list[str]
    ood: NDArray[np.int64]


Snapshots = list[WindowSnapshot]  # (the store's own `list` method shadows the name inside it)


@dataclass(frozen=True, slots=True)
class Reference:
    info: ReferenceInfo
    states: States  # "drift.*", "ood.*" arrays
    texts: list[str]  # in the order of the reference embeddings (possibly truncated)


Infos = list[ReferenceInfo]


class References(Protocol):
    """The versioned references and the drift windows' checkpoints, on either backend."""

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

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
        """A new version of (app, field), active unless told otherwise."""
        ...

    async def list(self) -> Infos: ...

    async def info(self, ref_id: int) -> ReferenceInfo | None: ...

    async def active_ids(self) -> dict[tuple[str, str], int]:
        """(app, field) -> id of its active version: cheap enough to poll."""
        ...

    async def load(self, ref_id: int) -> Reference | None: ...

    async def activate(self, ref_id: int) -> ReferenceInfo | None: ...

    async def save_windows(self, windows: Snapshots, now: float) -> None: ...

    async def load_windows(self, since: float) -> Snapshots:
        """Windows saved at or after `since`."""
        ...


def pack(states: States) -> bytes:
    buffer = io.BytesIO()
    savez: Any = np.savez  # numpy 1 and 2 type **kwds differently
    savez(buffer, **states)
    return buffer.getvalue()


def unpack(blob: bytes) -> States:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


COLUMNS = (
    "id, app, field, version, created_at, source, embedder, size, active, drift_threshold,"
    " ood_threshold"
)


def info_of(row: Any) -> ReferenceInfo:
    return ReferenceInfo(
        int(row[0]),
        str(row[1]),
        str(row[2]),
        int(row[3]),
        float(row[4]),
        str(row[5]),
        str(row[6]),
        int(row[7]),
        bool(row[8]),
        row[9],
        row[10],
    )


class ReferenceStore(SqliteBacked):
    def __init__(self, path: Path) -> None:
        self._sql = SqliteThread(
            path, migrate=migrate_sqlite, synchronous="NORMAL", name="lookout-refs"
        )

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
        """A new version of (app, field), active unless told otherwise."""
        blob, text_json = pack(states), json.dumps(texts)

        def work() -> int:
            db = self._sql.conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                (last,) = db.execute(
                    "SELECT COALESCE(MAX(version), 0) FROM detector_refs WHERE app=? AND field=?",
                    (app, field),
                ).fetchone()
                if activate:
                    db.execute(
                        "UPDATE detector_refs SET active = 0 WHERE app = ? AND field = ?",
                        (app, field),
                    )
                cur = db.execute(
                    "INSERT INTO detector_refs (app, field, version, created_at, source, embedder,"
                    " size, active, drift_threshold, ood_threshold, states, texts)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        app,
                        field,
                        last + 1,
                        now,
                        source,
                        embedder,
                        size,
                        int(activate),
                        drift_threshold,
                        ood_threshold,
                        blob,
                        text_json,
                    ),
                )
                return int(cur.lastrowid or 0)

        ref_id = await self._sql.run(work)
        info = await self.info(ref_id)
        assert info is not None
        return info

    async def list(self) -> list[ReferenceInfo]:
        sql = f"SELECT {COLUMNS} FROM detector_refs ORDER BY app, field, version"
        rows = await self._sql.run(lambda: self._sql.conn().execute(sql).fetchall())
        return [info_of(r) for r in rows]

    async def info(self, ref_id: int) -> ReferenceInfo | None:
        sql = f"SELECT {COLUMNS} FROM detector_refs WHERE id = ?"
        row = await self._sql.run(lambda: self._sql.conn().execute(sql, (ref_id,)).fetchone())
        return None if row is None else info_of(row)

    async def active_ids(self) -> dict[tuple[str, str], int]:
        """(app, field) -> id of its active version: cheap enough to poll."""
        sql = "SELECT app, field, id FROM detector_refs WHERE active = 1"
        rows = await self._sql.run(lambda: self._sql.conn().execute(sql).fetchall())
        return {(r[0], r[1]): int(r[2]) for r in rows}

    async def load(self, ref_id: int) -> Reference | None:
        sql = f"SELECT {COLUMNS}, states, texts FROM detector_refs WHERE id = ?"
        row = await self._sql.run(lambda: self._sql.conn().execute(sql, (ref_id,)).fetchone())
        if row is None:
            return None
        return Reference(info_of(row[:11]), unpack(row[11]), json.loads(row[12]))

    async def activate(self, ref_id: int) -> ReferenceInfo | None:
        def work() -> bool:
            db = self._sql.conn()
            with db:
                db.execute("BEGIN IMMEDIATE")
                row = db.execute(
                    "SELECT app, field FROM detector_refs WHERE id = ?", (ref_id,)
                ).fetchone()
                if row is None:
                    return False
                db.execute(
                    "UPDATE detector_refs SET active = (id = ?) WHERE app = ? AND field = ?",
                    (ref_id, row[0], row[1]),
                )
                return True

        if not await self._sql.run(work):
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

        def work() -> None:
            db = self._sql.conn()
            with db:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO detector_windows VALUES (?,?,?,?,?,?)", rows)

        await self._sql.run(work)

    async def load_windows(self, since: float) -> Snapshots:
        """Windows saved at or after `since` (older ones say little about traffic now)."""
        sql = (
            "SELECT app, field, ref_id, embeddings, texts FROM detector_windows WHERE saved_at >= ?"
        )
        rows = await self._sql.run(lambda: self._sql.conn().execute(sql, (since,)).fetchall())
        out = []
        for app, field, ref_id, blob, texts in rows:
            arrays = unpack(blob)
            x = arrays["x"].astype(np.float32)
            ood = arrays.get("ood", np.zeros((0, 3))).astype(np.int64)  # older saves: none
            out.append(WindowSnapshot(app, field, int(ref_id), x, json.loads(texts), ood))
        return out
