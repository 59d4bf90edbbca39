"""The durable outbox: a notification is committed to disk before any attempt to send it.

`Outbox` is what the engine, the delivery workers, Slack's threading, the API's silences and
the CLI use. Its backends are in the storage layer: SQLite on a node alone
(monitor/storage/sqlite_outbox.py), PostgreSQL on a cluster (monitor/storage/pg_outbox.py). A
notification that `enqueue` returned for survives kill -9 and a power cut; a worker then sends,
retries with capped jittered backoff, and marks it delivered, failed (a final answer) or
expired (too old). Enqueueing the same (channel, idempotency key) twice keeps one row.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lookout.alerts.silences import DEFAULT_SILENCE_MAX_S, Silence, silence_from_request
from lookout.alerts.state import Alert

__all__ = [
    "DEFAULT_SILENCE_MAX_S",
    "Outbox",
    "OutboxEntry",
    "OutboxItem",
    "OutboxStatus",
    "Silence",
    "silence_from_request",
]


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class OutboxItem:
    id: int
    channel: str
    idempotency_key: str
    payload: dict[str, Any]
    created_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class OutboxEntry:
    """One notification to enqueue: its dedup key is (channel, idempotency_key)."""

    channel: str
    idempotency_key: str
    payload: dict[str, Any]
    ordering_key: str = ""  # entries sharing (channel, ordering_key) go out in order


class Outbox(Protocol):
    """Alert state, silences, Slack threads and the notifications to deliver: a SQLite file
    for a node alone (SqliteOutbox), PostgreSQL for a cluster (monitor/storage/pg_outbox.py),
    where `commit`, `enqueue` and `save_alerts` are the alert leader's and `due` hands a row to
    one node at a time."""

    async def commit(
        self, alerts: Sequence[Alert], entries: Sequence[OutboxEntry], now: float
    ) -> list[OutboxEntry]:
        """Save `alerts` and enqueue `entries` in one transaction; returns the entries refused
        because their (channel, idempotency key) is there already."""
        ...

    async def due(self, channel: str, now: float, limit: int = 100) -> list[OutboxItem]: ...

    async def release(self, item_ids: Collection[int]) -> None:
        """Give back items `due` handed this node that it will not try (it is stopping), so
        another node may send them now rather than when their claim runs out."""
        ...

    async def next_due_at(self, channel: str) -> float | None: ...

    async def fail_unknown_channels(self, channels: Collection[str], now: float) -> int: ...

    async def message_ids(self, channel: str, alert_keys: Collection[str]) -> dict[str, str]: ...

    async def remember_message(
        self, channel: str, message_id: str, alert_keys: Collection[str], now: float
    ) -> None: ...

    async def finish(
        self, item_id: int, status: OutboxStatus, now: float, error: str = ""
    ) -> None: ...

    async def retry_at(self, item_id: int, next_at: float, error: str) -> None: ...

    async def expire(self, channel: str, older_than: float, now: float) -> int: ...

    async def save_alerts(self, alerts: list[Alert]) -> None: ...

    async def load_alerts(self) -> list[Alert]: ...

    async def add_silence(self, silence: Silence) -> None: ...

    async def silences(self, active_at: float | None = None) -> list[Silence]: ...

    async def expire_silence(self, silence_id: str, now: float) -> bool: ...

    async def depth(self) -> tuple[int, float | None]: ...


class CommitShortcuts:
    """`enqueue` and `save_alerts` of an outbox, as one-part `commit`s."""

    async def commit(
        self, alerts: Sequence[Alert], entries: Sequence[OutboxEntry], now: float
    ) -> list[OutboxEntry]:
        raise NotImplementedError

    async def enqueue(
        self,
        channel: str,
        idempotency_key: str,
        payload: dict[str, Any],
        now: float,
        ordering_key: str = "",
    ) -> bool:
        """Commit one notification (False: its key is there already). Those sharing (channel,
        ordering_key) go out in order."""
        entry = OutboxEntry(channel, idempotency_key, payload, ordering_key)
        return not await self.commit([], [entry], now)

    async def save_alerts(self, alerts: list[Alert]) -> None:
        """Upsert alert states, so a restart neither re-fires nor forgets a firing alert."""
        await self.commit(alerts, [], 0.0)
