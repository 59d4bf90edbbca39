"""Stored feedback: every accepted event, in its own table, joined to records by id when read.

Feedback often arrives before its record is stored, or for a record that is never stored (only
a sample of ok records is), so it is not a column of `records`. Rows go into the store's commit
groups like records (committed before the message is acknowledged); the primary key is the
event's identity, so a redelivery is stored once even across restarts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

if TYPE_CHECKING:
    from lookout.monitor.ingest.feedback import Feedback

T = TypeVar("T")

FEEDBACK_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    app TEXT NOT NULL, record_id TEXT NOT NULL, key TEXT NOT NULL, user_id TEXT NOT NULL,
    score REAL NOT NULL, value TEXT, comment TEXT, ts REAL NOT NULL, received_at REAL NOT NULL,
    negative INTEGER NOT NULL, PRIMARY KEY (app, record_id, key, user_id)
);
CREATE INDEX IF NOT EXISTS feedback_received ON feedback (received_at);
"""
_ROW_OVERHEAD_BYTES = 100  # as the store counts a row in its buffer
_COLUMNS = "app, record_id, key, user_id, score, value, comment, ts, received_at, negative"
_INSERT = f"INSERT OR IGNORE INTO feedback ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
# Has the record negative feedback? For the judge's sampling, on a `records r` row.
NEGATIVE_FEEDBACK_SQL = (
    "EXISTS (SELECT 1 FROM feedback fb WHERE fb.app = r.app AND fb.record_id = r.id"
    " AND fb.negative)"
)


@dataclass(frozen=True, slots=True)
class StoredFeedback:
    app: str
    record_id: str
    key: str
    user_id: str
    score: float
    value: str | None
    comment: str | None  # redacted before it was stored
    ts: float
    received_at: float
    negative: bool  # at or below its key's negative score when it was received


def feedback_row(f: Feedback, negative: bool) -> tuple[Any, ...]:
    """An event as a row in `_COLUMNS` order."""
    return (
        f.app,
        f.record_id,
        f.key,
        f.user_id,
        f.score,
        f.value,
        f.comment,
        f.ts,
        f.received_at,
        int(negative),
    )


def _stored(*row: Any) -> StoredFeedback:
    app, record_id, key, user_id, score, value, comment, ts, received_at, negative = row
    return StoredFeedback(
        app, record_id, key, user_id, score, value, comment, ts, received_at, bool(negative)
    )


def write_feedback(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Inside the commit group's transaction."""
    if rows:
        db.executemany(_INSERT, rows)


def prune_feedback(db: sqlite3.Connection, cutoff: float) -> None:
    db.execute("DELETE FROM feedback WHERE received_at < ?", (cutoff,))


class FeedbackTable(Protocol):
    """Feedback events into the store's open commit group, and what the API, the judge's
    agreement and a restart read back."""

    def put(self, event: Feedback, negative: bool) -> None:
        """Buffer an event (its identity is stored once; a repeat is ignored) and whether it
        is negative (at or below its key's negative score)."""
        ...

    async def for_record(self, app: str, record_id: str) -> list[StoredFeedback]:
        """A record's feedback, oldest first."""
        ...

    async def since(self, received_since: float) -> list[StoredFeedback]:
        """Events received from `received_since` on, oldest first (to seed the windows)."""
        ...

    async def recent(self, limit: int) -> list[StoredFeedback]:
        """The newest `limit` events, oldest first (to recognise their repeats)."""
        ...


class SqliteFeedback:
    """Rows into the SQLite store's open group (`admit` bounds it, as for records); reads on
    the store's thread."""

    def __init__(
        self,
        run: Callable[[Callable[[], Any]], Awaitable[Any]],
        conn: Callable[[], sqlite3.Connection],
        admit: Callable[[int], bool],
        rows: Callable[[], list[tuple[Any, ...]]],
    ) -> None:
        self._run = run
        self._conn = conn
        self._admit = admit
        self._group_rows = rows

    def put(self, event: Feedback, negative: bool) -> None:
        if self._admit(len(event.comment or "") + _ROW_OVERHEAD_BYTES):
            self._group_rows().append(feedback_row(event, negative))

    async def _rows(self, sql: str, args: tuple[Any, ...]) -> list[StoredFeedback]:
        rows = await self._run(lambda: self._conn().execute(sql, args).fetchall())
        return [_stored(*row) for row in rows]

    async def for_record(self, app: str, record_id: str) -> list[StoredFeedback]:
        sql = f"SELECT {_COLUMNS} FROM feedback WHERE app = ? AND record_id = ? ORDER BY ts"
        return await self._rows(sql, (app, record_id))

    async def since(self, received_since: float) -> list[StoredFeedback]:
        sql = f"SELECT {_COLUMNS} FROM feedback WHERE received_at >= ? ORDER BY received_at"
        return await self._rows(sql, (received_since,))

    async def recent(self, limit: int) -> list[StoredFeedback]:
        sql = f"SELECT {_COLUMNS} FROM feedback ORDER BY received_at DESC, rowid DESC LIMIT ?"
        return list(reversed(await self._rows(sql, (limit,))))
