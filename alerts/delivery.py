"""Delivery: one worker per channel takes due notifications from the outbox to the notifier.

A channel's worker never waits on another's receiver. Notifications of one alert group go out
in order (the outbox hands out only the head of each line); a channel whose notifier posts one
message for many (Slack) gets a burst merged into one send. Outcomes are final (delivered,
failed), or a retry at a capped, jittered, exponentially growing delay that honours the
receiver's Retry-After.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from lookout.alerts.outbox import Outbox, OutboxItem, OutboxStatus
from lookout.alerts.payload import Outcome, batch_key, merge_payloads
from lookout.backoff import backoff_s
from lookout.errors import StoreError

if TYPE_CHECKING:
    from prometheus_client import Counter

    from lookout.clock import Clock

log = structlog.get_logger(__name__)


class ChannelNotifier(Protocol):
    # How many alerts one send may carry when due notifications are merged (1: never merge).
    merge_limit: int

    async def send(self, payload: dict[str, Any], idempotency_key: str, now: float) -> Outcome: ...


def batches(items: Sequence[OutboxItem], merge_limit: int) -> list[list[OutboxItem]]:
    """Consecutive items of one status, up to `merge_limit` alerts a batch (one item at least)."""
    out: list[list[OutboxItem]] = []
    alerts = 0
    for item in items:
        n = len(item.payload.get("alerts", ())) or 1
        last = out[-1] if out else None
        if (
            last is not None
            and last[0].payload.get("status") == item.payload.get("status")
            and alerts + n <= merge_limit
        ):
            last.append(item)
            alerts += n
        else:
            out.append([item])
            alerts = n
    return out


class ChannelDelivery:
    def __init__(
        self,
        channel: str,
        notifier: ChannelNotifier,
        *,
        outbox: Outbox,
        clock: Clock,
        counter: Counter,
        after_pass: Callable[[float], Awaitable[None]],
        rng: random.Random | None = None,
        retry_base_s: float = 1.0,
        retry_cap_s: float = 300.0,
    ) -> None:
        self.channel = channel
        self.wake = asyncio.Event()
        self._notifier = notifier
        self._outbox = outbox
        self._clock = clock
        self._counter = counter
        self._after_pass = after_pass
        self._rng = rng or random.Random()
        self._retry_base_s = retry_base_s
        self._retry_cap_s = retry_cap_s

    async def run(self, stopping: asyncio.Event) -> None:
        """Deliver until `stopping` is set; a send under way when it is set is let finish."""
        while not stopping.is_set():
            try:
                await self.deliver_due(self._clock.now(), stopping)
                next_at = await self._outbox.next_due_at(self.channel)
            except StoreError as exc:  # a shared outbox's database is away: try again soon
                log.warning("notification_delivery_paused", channel=self.channel, error=str(exc))
                next_at = None
            wait_s = 1.0 if next_at is None else min(max(next_at - self._clock.now(), 0.01), 1.0)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self.wake.wait()
            self.wake.clear()

    async def deliver_due(self, now: float, stopping: asyncio.Event | None = None) -> int:
        """Try every due notification once; returns how many were delivered."""
        delivered = 0
        items = await self._outbox.due(self.channel, now)
        tried = 0
        for batch in batches(items, max(self._notifier.merge_limit, 1)):
            if stopping is not None and stopping.is_set():
                # Stopping: what this node claimed and will not try goes back at once.
                await self._outbox.release([item.id for item in items[tried:]])
                break
            tried += len(batch)
            payload = merge_payloads([i.payload for i in batch])
            outcome = await self._notifier.send(
                payload, batch_key([i.idempotency_key for i in batch]), now
            )
            delivered += await self._record(batch, outcome)
        await self._after_pass(self._clock.now())
        return delivered

    async def _record(self, batch: list[OutboxItem], outcome: Outcome) -> int:
        done_at = self._clock.now()
        if outcome.delivered:
            for item in batch:
                await self._outbox.finish(item.id, OutboxStatus.DELIVERED, done_at)
            self._counter.labels(self.channel, "delivered").inc(len(batch))
            return len(batch)
        if outcome.retry:
            attempts = max(i.attempts for i in batch)
            delay_s = backoff_s(
                attempts,
                self._rng,
                base_s=self._retry_base_s,
                cap_s=self._retry_cap_s,
                retry_after_s=outcome.retry_after_s,
            )
            for item in batch:
                await self._outbox.retry_at(item.id, done_at + delay_s, outcome.detail)
            self._counter.labels(self.channel, "retry").inc(len(batch))
            log.warning(
                "notification_retry",
                channel=self.channel,
                detail=outcome.detail,
                attempt=attempts + 1,
                retry_in_s=round(delay_s, 2),
            )
            return 0
        for item in batch:
            await self._outbox.finish(item.id, OutboxStatus.FAILED, done_at, outcome.detail)
        self._counter.labels(self.channel, "failed").inc(len(batch))
        log.error("notification_failed", channel=self.channel, detail=outcome.detail)
        return 0
