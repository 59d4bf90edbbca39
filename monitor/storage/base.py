"""The store interface: what the pipeline, the rollups and the API need of durable state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable
    from types import TracebackType

    from lookout.monitor.ingest.records import Record, Rejection
    from lookout.monitor.storage.feedback import FeedbackTable


@dataclass(frozen=True, slots=True)
class RollupPoint:
    minute: int  # epoch seconds of the minute's start
    app: str
    model: str
    series: str
    value: float


@dataclass(frozen=True, slots=True)
class PartialRow:
    """What one commit group adds to an (app, model, minute): counts, sums and t-digests
    (fastdigest's `to_bytes`; None when the group had no such value)."""

    minute: int  # epoch seconds of the minute's start
    app: str
    model: str
    count: int
    errors: int
    output_tokens: int
    tokens: int
    token_records: int
    cost: float
    latency_s: bytes | None
    ttft_s: bytes | None
    gen_tps: bytes | None


@dataclass(frozen=True, slots=True)
class RejectedSample:
    at: float
    source: str
    reason: str
    detail: str
    sample: bytes


class Store(Protocol):
    """Durable state, written in commit groups.

    `put_*` never block the event loop: they add to the open group, which a task commits in one
    transaction (every `store.flush_interval_s`, or sooner when it grows); only then are the
    group's `after_commit` callbacks run, in order: the acknowledgements of the messages and
    requests whose rows and partials it holds.
    """

    @property
    def feedback(self) -> FeedbackTable:
        """Feedback events: buffered into the open group, and read back."""
        ...

    async def __aenter__(self) -> Store: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def put_record(self, record: Record, cost: float) -> str | None:
        """Buffer a record; its id (the record's own or a fresh one), None if dropped."""
        ...

    def put_scores(self, rows: list[tuple[str, str, float, str]]) -> None:
        """Attach detector scores to stored records: (app, id, OOD score, flags JSON object);
        ids are unique per app only."""
        ...

    def put_rejected(self, rejection: Rejection, source: str, at: float) -> None: ...

    def put_rollups(self, points: list[RollupPoint]) -> None: ...

    def put_partials(self, rows: list[PartialRow]) -> None:
        """Add per-minute partial aggregates to the stored minutes (in the group's commit)."""
        ...

    def put_seen_ids(self, ids: list[tuple[str, str]]) -> None:
        """(app, record id) of the group's counted records, to recognise redeliveries after a
        restart; the newest are kept (`keep_ids`)."""
        ...

    def on_group_close(self, fn: Callable[[], None]) -> None:
        """Call `fn` just before each group is taken for its commit (to add partials, ids)."""
        ...

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call `fn` once everything put so far is committed."""
        ...

    def set_ack_window(self, window: int) -> None:
        """The source's in-flight window (unacknowledged messages the broker sends before
        it waits): the store commits early once half of it waits for a commit."""
        ...

    def committed(self) -> asyncio.Future[None]:
        """Resolved once everything put so far is committed."""
        ...

    def has_room(self) -> bool:
        """False while the open and committing groups hold more than the soft limit."""
        ...

    async def wait_room(self) -> None:
        """Until `has_room()`: sources pause here, so back-pressure reaches the broker."""
        ...

    async def flush(self) -> None:
        """Commit everything put so far, now."""
        ...

    async def prune(self, now: float) -> None:
        """Delete what is older than `store.retention` (the committer does every minute)."""
        ...

    async def partials(
        self,
        since: float,
        until: float = float("inf"),
        app: str | None = None,
        *,
        node: str | None = None,
    ) -> list[PartialRow]:
        """Stored minutes from `since` to before `until`; `node`: only that node's rows
        (PostgreSQL; a SQLite store holds one node's)."""
        ...

    async def recent_ids(self, limit: int) -> list[tuple[str, str]]:
        """The newest `limit` stored (app, record id), oldest first."""
        ...

    async def get_record(self, record_id: str) -> dict[str, Any] | None: ...

    async def rollups(
        self, since: float, app: str | None = None, series: str | None = None
    ) -> list[RollupPoint]: ...

    async def rollup_means(
        self, since: float, step_s: float, until: float = float("inf")
    ) -> list[RollupPoint]:
        """Rollups over all models from `since` to before `until`, averaged in buckets of
        `step_s` (each point's `minute` is its bucket's start): chart data, aggregated where
        the rows are."""
        ...

    async def rejected(self, limit: int = 100) -> list[RejectedSample]: ...

    async def recent_flagged(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest records flagged out-of-distribution, newest first."""
        ...

    async def count_records(self) -> int: ...

    async def writable(self) -> bool: ...


def sqlite_path(url: str) -> Path:
    """sqlite:///var/lib/lookout/lookout.db is the absolute path /var/lib/lookout/lookout.db."""
    return Path("/" + url.removeprefix("sqlite://").lstrip("/"))


def rollups_query(
    since: float, app: str | None, series: str | None, placeholder: str
) -> tuple[str, list[Any]]:
    """The stored per-minute series since `since` (of one app or series), in either
    backend's placeholder style (`?` or `%s`)."""
    sql = f"SELECT minute, app, model, series, value FROM rollups WHERE minute >= {placeholder}"
    args: list[Any] = [since]
    for column, value in (("app", app), ("series", series)):
        if value is not None:
            sql += f" AND {column} = {placeholder}"
            args.append(value)
    return sql + " ORDER BY minute", args
