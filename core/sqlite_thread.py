"""One SQLite connection on one dedicated thread: the event loop never waits on disk, and
SQLite's single-writer rule holds by construction."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from lookout.errors import DatabaseError

T = TypeVar("T")


def dict_rows(cursor: sqlite3.Cursor) -> list[dict[str, Any]]:
    """A query's rows as {column: value} mappings."""
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def create_private(path: Path) -> None:
    """Create the database file 0600, and the directories missing above it 0700, unless they
    exist: it holds prompts and responses, so no other local user may read it (systemd's
    UMask=0077 does the same under the unit; this holds outside it). SQLite gives its -wal and
    -shm files the database file's mode."""
    missing = [p for p in (path.parent, *path.parent.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SqliteThread:
    def __init__(
        self,
        path: Path,
        *,
        synchronous: Literal["NORMAL", "FULL"],
        name: str,
        migrate: Callable[[sqlite3.Connection], object] | None = None,
    ) -> None:
        """`migrate`: brings the database's tables up to date (versioned migrations) at open."""
        self.path = path
        self._migrate = migrate
        self._synchronous = synchronous
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._db: sqlite3.Connection | None = None

    def _open(self) -> None:
        create_private(self.path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self._synchronous}")
            db.execute("PRAGMA busy_timeout=5000")
            if self._migrate is not None:
                self._migrate(db)
        except BaseException:
            db.close()
            raise
        self._db = db

    async def open(self) -> None:
        try:
            await self.run(self._open)
        except (sqlite3.DatabaseError, OSError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self._executor.shutdown(wait=False)
            raise DatabaseError(f"cannot open the database {self.path}: {reason}") from exc
        except BaseException:
            self._executor.shutdown(wait=False)
            raise

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
