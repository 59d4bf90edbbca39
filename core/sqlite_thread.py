"""One SQLite connection on one dedicated thread: the event loop never waits on disk, and
SQLite's single-writer rule holds by construction."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

T = TypeVar("T")


def dict_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """A query's rows as {column: value} mappings."""
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


class SqliteThread:
    def __init__(
        self,
        path: Path,
        *,
        schema: str,
        synchronous: Literal["NORMAL", "FULL"],
        name: str,
        added_columns: Sequence[tuple[str, str, str]] = (),
    ) -> None:
        """`added_columns`: (table, column, declaration) that later versions added to a table;
        a database made by an earlier version gets them before `schema` runs."""
        self.path = path
        self._schema = schema
        self._added_columns = added_columns
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._synchronous}")
        db.execute("PRAGMA busy_timeout=5000")
        for table, column, declaration in self._added_columns:
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if present and column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        db.executescript(self._schema)
        self._db = db

    async def open(self) -> None:
        await self.run(self._open)

    async def close(self) -> None:
        db = self._db
        if db is not None:
            await self.run(db.close)
            self._db = None
        self._executor.shutdown(wait=True)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the connection's thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    def conn(self) -> sqlite3.Connection:
        """The connection; only for functions passed to `run`."""
        if self._db is None:
            raise sqlite3.ProgrammingError(f"{self.path} is not open")
        return self._db


class SqliteBacked:
    """An async context manager around the `SqliteThread` a subclass keeps in `_sql`."""

    _sql: SqliteThread

    async def __aenter__(self) -> Self:
        await self._sql.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._sql.close()
