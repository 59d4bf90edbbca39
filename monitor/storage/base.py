"""The store interface: what the pipeline, the rollups and the API need of durable state."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from types import TracebackType

    from lookout.monitor.ingest.records import Record, Rejection


@dataclass(frozen=True, slots=True)
class RollupPoint:
    minute: int  # epoch seconds of the minute's start
    app: str
    model: str
    series: str
    value: float


@dataclass(frozen=True, slots=True)
class RejectedSample:
    at: float
    source: str
    reason: str
    detail: str
    sample: bytes


class Store(Protocol):
    """Durable state. `put_*` never block the event loop: they buffer, a task writes batches."""

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

    def put_scores(self, rows: list[tuple[str, float, str]]) -> None:
        """Attach detector scores to stored records: (id, OOD score, flags JSON object)."""
        ...

    def put_rejected(self, rejection: Rejection, source: str, at: float) -> None: ...

    def put_rollups(self, points: list[RollupPoint]) -> None: ...

    async def flush(self) -> None: ...

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
