"""Stored feedback: every accepted event, in its own table, joined to records by id when read.

Feedback often arrives before its record is stored, or for a record that is never stored (only
a sample of ok records is), so it is not a column of `records`. Events go into the store's
commit groups like records (committed before the message is acknowledged; schema.py has the
table of each backend); the primary key is the event's identity, so a redelivery is stored
once even across restarts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lookout.monitor.ingest.feedback import Feedback

COLUMNS = "app, record_id, key, user_id, score, value, comment, ts, received_at, negative"
# Has the record negative feedback? For the judge's sampling, on a `records r` row (SQLite).
NEGATIVE_FEEDBACK_SQL = (
    "EXISTS (SELECT 1 FROM feedback fb WHERE fb.app = r.app AND fb.record_id = r.id"
    " AND fb.negative)"
)
# Rows of one instant (one message's events) in a fixed order: the primary key.
_TIES = "app, record_id, key, user_id"
_TIES_DESC = "app DESC, record_id DESC, key DESC, user_id DESC"

# A backend's query: SQL with its placeholders and the arguments, to rows.
Fetch = Callable[[str, tuple[Any, ...]], Awaitable[list[tuple[Any, ...]]]]


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
    """An event as a row in `COLUMNS` order."""
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
        negative,
    )


def _stored(*row: Any) -> StoredFeedback:
    app, record_id, key, user_id, score, value, comment, ts, received_at, negative = row
    return StoredFeedback(
        app, record_id, key, user_id, score, value, comment, ts, received_at, bool(negative)
    )


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


class StoreFeedback:
    """The store's feedback table on either backend: `put` adds to the open commit group (the
    committer admits it, as a record), reads go through the backend's `fetch`, whose
    placeholder is `param`."""

    def __init__(self, put: Callable[[Feedback, bool], None], fetch: Fetch, param: str) -> None:
        self._put = put
        self._fetch = fetch
        select = f"SELECT {COLUMNS} FROM feedback"
        self._for_record = (
            f"{select} WHERE app = {param} AND record_id = {param} ORDER BY ts, key, user_id"
        )
        self._since = f"{select} WHERE received_at >= {param} ORDER BY received_at, {_TIES}"
        self._recent = f"{select} ORDER BY received_at DESC, {_TIES_DESC} LIMIT {param}"

    def put(self, event: Feedback, negative: bool) -> None:
        self._put(event, negative)

    async def _rows(self, sql: str, args: tuple[Any, ...]) -> list[StoredFeedback]:
        return [_stored(*row) for row in await self._fetch(sql, args)]

    async def for_record(self, app: str, record_id: str) -> list[StoredFeedback]:
        return await self._rows(self._for_record, (app, record_id))

    async def since(self, received_since: float) -> list[StoredFeedback]:
        return await self._rows(self._since, (received_since,))

    async def recent(self, limit: int) -> list[StoredFeedback]:
        return list(reversed(await self._rows(self._recent, (limit,))))
