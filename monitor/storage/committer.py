"""Group commit, the part every backend shares: the open group, back-pressure, the committer
task, retries, and the acknowledgements that run only after a commit.

A backend supplies how a group is written (in one transaction, or row by row when its content
is refused), which of its errors are transient, retention, and the queries.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Self

import structlog

from lookout.backoff import backoff_s
from lookout.monitor.storage.feedback import feedback_row
from lookout.monitor.storage.groups import CommitGroup, encode_record_row

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable
    from types import TracebackType

    from lookout.clock import Clock
    from lookout.monitor.config import StoreConfig
    from lookout.monitor.ingest.feedback import Feedback
    from lookout.monitor.ingest.records import Record, Rejection
    from lookout.monitor.metrics.prom import IngestMetrics
    from lookout.monitor.storage.base import PartialRow, RollupPoint

log = structlog.get_logger(__name__)

_COMMIT_AT_BYTES = 4 * 1024 * 1024
ROW_OVERHEAD_BYTES = 100
_PRUNE_EVERY_S = 60.0
_RETRY_BASE_S = 0.1
_RETRY_MAX_S = 5.0
_ATTEMPTS_WHEN_CLOSING = 3


class GroupCommitStore(ABC):
    """The `Store` protocol's writing half; subclasses add the backend and the queries."""

    # The backend's error classes that `_write` raises: retried with backoff.
    _db_errors: tuple[type[Exception], ...] = ()

    def __init__(
        self,
        cfg: StoreConfig,
        metrics: IngestMetrics,
        clock: Clock,
        *,
        keep_ids: int = 100_000,
    ) -> None:
        self._cfg = cfg
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
        self._rng = random.Random()

    # --- the backend ----------------------------------------------------------------------

    @abstractmethod
    async def _open_backend(self) -> None:
        """Connect and bring the schema up to date; StoreError when it cannot."""

    @abstractmethod
    async def _close_backend(self) -> None: ...

    @abstractmethod
    async def _write(self, group: CommitGroup) -> int:
        """`group` in one transaction; if the database refuses it for its content, row by row,
        leaving out (and keeping as 'store_refused' rejected samples) the rows it refuses.
        Returns how many were left out; raises (one of `_db_errors`) what is worth retrying."""

    @abstractmethod
    async def prune(self, now: float) -> None: ...

    # --- life cycle -----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self._open_backend()
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
        try:
            await self.flush()
        finally:
            await self._close_backend()

    async def _flusher(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._cfg.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            await self.flush()
            now = self._clock.now()
            if now - self._last_prune >= _PRUNE_EVERY_S:
                self._last_prune = now
                await self.prune(now)

    # --- the open group -------------------------------------------------------------------

    def _admit(self, size_bytes: int = ROW_OVERHEAD_BYTES) -> bool:
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
        # Encoded here, one row at a time (~1 us): the writer then needs the GIL only to join
        # bytes, and the buffer is measured in the bytes it really holds.
        row = encode_record_row(record, record_id, cost)
        if not self._admit(len(row) + ROW_OVERHEAD_BYTES):
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

    def put_feedback(self, event: Feedback, negative: bool) -> None:
        """A feedback event into the open group (the store's `feedback.put`)."""
        if self._admit(len(event.comment or "") + ROW_OVERHEAD_BYTES):
            self._group.feedback.append(feedback_row(event, negative))

    def put_rollups(self, points: list[RollupPoint]) -> None:
        for p in points:
            if self._admit():
                self._group.rollups.append((p.minute, p.app, p.model, p.series, p.value))

    def put_partials(self, rows: list[PartialRow]) -> None:
        # Not bounded like rows: one per (app, model, minute) touched, and never dropped.
        self._group.partials += rows

    def put_seen_ids(self, ids: list[tuple[str, str]]) -> None:
        self._group.ids += ids

    # --- committing -----------------------------------------------------------------------

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
            self._metrics.store_commits.inc()
            m = self._metrics.store_writes
            m.labels("records").inc(len(group.records))
            m.labels("rejected").inc(len(group.rejected))
            m.labels("rollups").inc(len(group.rollups))
            m.labels("feedback").inc(len(group.feedback))

    async def _commit(self, group: CommitGroup) -> bool:
        """Write the group, retrying with backoff: a transient error (disk full, a lost
        connection) delays acknowledgements, it does not lose what they promise. A group the
        database refuses for its content is written row by row (by `_write`), leaving out (and
        keeping as rejected samples) only the rows it refuses: one bad row must not stall
        ingest."""
        attempt = 0
        while True:
            try:
                refused = await self._write(group)
            except self._db_errors as exc:
                self._metrics.store_errors.inc()
                log.error("store_write_failed", error=str(exc), rows=group.rows, attempt=attempt)
                attempt += 1
                if self._stop.is_set() and attempt >= _ATTEMPTS_WHEN_CLOSING:
                    self._metrics.dropped.labels("store").inc(group.rows)
                    return False
                delay_s = backoff_s(attempt, self._rng, base_s=_RETRY_BASE_S, cap_s=_RETRY_MAX_S)
                await asyncio.sleep(delay_s)
                continue
            if refused:
                self._metrics.dropped.labels("store").inc(refused)
                log.error("store_rows_refused", rows=refused, of=group.rows)
            return True
