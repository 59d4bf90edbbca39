"""The per-record path every source shares: decode, de-duplicate, count, sample to the store.

Each record is counted once, into the windows' open partial of its bucket; when the store
closes a commit group the pipeline hands it those partials, merged per minute, and the (app, id)
pairs counted since, committed with the group's sampled rows (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from lookout.monitor.ingest.records import DecodeLimits, Record, Rejection, decode_payload
from lookout.monitor.ingest.sampling import RecordSampler
from lookout.monitor.metrics.partials import partial_rows
from lookout.monitor.metrics.prices import PriceTable
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.metrics.windows import WindowedMetrics
from lookout.monitor.storage import Store

# (folded app, records of that app, their time): records counted one after another.
UsageHook = Callable[[str, list[Record], float], None]


class RecentIds:
    """The last `capacity` (app, record id) pairs, to ignore redeliveries; ids are an app's
    own, so two apps may use the same one. O(1) per id, bounded memory; the pairs added since
    the last `take_new` go to the store with the commit group that counted them."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._order: deque[tuple[str, str]] = deque()
        self._ids: set[tuple[str, str]] = set()
        self._new: list[tuple[str, str]] = []

    def seen(self, app: str, record_id: str) -> bool:
        """True if `record_id` of `app` was seen recently; remembers it otherwise."""
        if self._capacity == 0:
            return False
        key = (app, record_id)
        ids = self._ids
        if key in ids:
            return True
        order = self._order
        if len(order) >= self._capacity:
            ids.discard(order.popleft())
        order.append(key)
        ids.add(key)
        self._new.append(key)
        return False

    def _remember(self, key: tuple[str, str]) -> None:
        if len(self._order) >= self._capacity:
            self._ids.discard(self._order.popleft())
        self._order.append(key)
        self._ids.add(key)

    def restore(self, pairs: list[tuple[str, str]]) -> None:
        """Remember ids committed before a restart (oldest first): their redeliveries."""
        for key in pairs[-self._capacity :] if self._capacity else ():
            if key not in self._ids:
                self._remember(key)

    def take_new(self) -> list[tuple[str, str]]:
        new, self._new = self._new, []
        return new


@dataclass(frozen=True, slots=True)
class IngestResult:
    accepted: int
    duplicates: int
    rejected: list[tuple[str, str]]  # (reason, detail)
    first_ts: float | None = None  # earliest and latest accepted record time
    last_ts: float | None = None


class Pipeline:
    def __init__(
        self,
        windows: WindowedMetrics,
        prices: PriceTable,
        prom: IngestMetrics,
        store: Store,
        limits: DecodeLimits,
        *,
        sample_rate: float,
        dedupe_ids: int,
        rng: random.Random | None = None,
        shadow_key: str = "shadow_of",
    ) -> None:
        self.windows = windows
        self._prices = prices
        self._prom = prom
        self._store = store
        self._limits = limits
        self._sampler = RecordSampler(sample_rate, shadow_key, (rng or random.Random()).random)
        self._recent = RecentIds(dedupe_ids)
        self._recent_capacity = dedupe_ids
        store.on_group_close(self._close_group)
        self._totals = prom.totals
        windows.on_release.append(prom.totals.forget_apps)
        # Set by the daemon when detectors run: sees every counted record (it samples itself),
        # with the id it was stored under, if it was.
        self.detector: Callable[[Record, float, str | None, float], None] | None = None
        # Set by the daemon: engagement and tool use. Each sees the counted records that carry
        # any of user_id, session_id, tools or retrieval, a message's run of one (folded) app
        # and time at once (a call per record cost more than their windows' own work).
        self.engagement: UsageHook | None = None
        self.tool_use: UsageHook | None = None
        # Set by the daemon: takes the messages of other kinds by topic (feedback), None else.
        self.route: Callable[[bytes, str, str, float], IngestResult | None] | None = None

    def _close_group(self) -> None:
        """The store is about to commit its group: add this group's partials and ids."""
        taken = self.windows.take_open()
        if taken:
            self._store.put_partials(partial_rows(taken))
        new_ids = self._recent.take_new()
        if new_ids:
            self._store.put_seen_ids(new_ids)

    async def restore(self, node: str | None = None) -> None:
        """After a restart: remember the committed ids (their redeliveries are duplicates)
        and seed the windows with the committed minutes they cover (`node`: only that node's,
        in a cluster whose other nodes' minutes are read beside the windows)."""
        self._recent.restore(await self._store.recent_ids(self._recent_capacity))
        since = self.windows.started_at - self.windows.max_window_s
        for p in await self._store.partials(since, node=node):
            self.windows.merge_partial((p.app, p.model), float(p.minute), p)

    def has_room(self) -> bool:
        """False while the store holds more uncommitted rows than it should: pause ingest."""
        return self._store.has_room()

    async def wait_room(self) -> None:
        await self._store.wait_room()

    def committed(self) -> asyncio.Future[None]:
        """Resolved once what has been processed so far is committed (an HTTP answer)."""
        return self._store.committed()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Call `fn` (a message's ack) once what has been processed so far is committed."""
        self._store.after_commit(fn)

    def process_payload(
        self,
        payload: bytes,
        topic: str | None,
        source: str,
        now: float,
        *,
        event_time: bool = False,
    ) -> IngestResult:
        """Process one message. With `event_time`, windows follow each record's own ts (replay)."""
        if self.route is not None and topic is not None:
            routed = self.route(payload, topic, source, now)
            if routed is not None:
                return routed
        messages = self._totals.messages
        messages[source] = messages.get(source, 0) + 1
        decoded = decode_payload(payload, topic, now, self._limits)
        rejected = [self._count_rejection(r, source, now) for r in decoded.rejections]
        accepted, duplicates = self._count_all(decoded.records, now if not event_time else None)
        if not (event_time and decoded.records):
            return IngestResult(accepted, duplicates, rejected)
        stamps = [r.ts for r in decoded.records]
        return IngestResult(accepted, duplicates, rejected, min(stamps), max(stamps))

    def _count_all(self, records: list[Record], now: float | None) -> tuple[int, int]:
        """Count a message's records at `now` (None: each at its own ts); (accepted, duplicates).
        Those with usage fields go to engagement and tool use in runs of one app and time."""
        accepted = duplicates = 0
        usage = self.engagement is not None or self.tool_use is not None
        run: list[Record] = []
        run_app, run_at = "", 0.0
        for record in records:
            at = record.ts if now is None else now
            app = self.process_record(record, at)
            if app is None:
                duplicates += 1
                continue
            accepted += 1
            if usage and (record.user_id or record.session_id or record.tools or record.retrieval):
                if app == run_app and at == run_at:
                    run.append(record)
                else:
                    if run:
                        self._observe_usage(run_app, run, run_at)
                    run, run_app, run_at = [record], app, at
        if run:
            self._observe_usage(run_app, run, run_at)
        return accepted, duplicates

    def _observe_usage(self, app: str, records: list[Record], now: float) -> None:
        if self.engagement is not None:
            self.engagement(app, records, now)
        if self.tool_use is not None:
            self.tool_use(app, records, now)

    def reject(self, rejection: Rejection, source: str, now: float) -> IngestResult:
        """Count a message refused before decoding (an HTTP body over the size limit)."""
        messages = self._totals.messages
        messages[source] = messages.get(source, 0) + 1
        return IngestResult(0, 0, [self._count_rejection(rejection, source, now)])

    def _count_rejection(self, rejection: Rejection, source: str, now: float) -> tuple[str, str]:
        self._prom.rejected.labels(rejection.reason.value).inc(rejection.count)
        self._store.put_rejected(rejection, source, now)
        return rejection.reason.value, rejection.detail

    def process_record(self, record: Record, now: float) -> str | None:
        """Count one record, under the app label it returns; None when it is a redelivery of
        one already counted."""
        if record.id is not None and self._recent.seen(record.app, record.id):
            self._prom.duplicates.inc()
            return None
        key = self.windows.labels_for(record.app, record.model)
        error = record.status == "error"
        latency_ms = record.latency_ms
        input_tokens = record.input_tokens
        output_tokens = record.output_tokens
        cost = 0.0
        if input_tokens or output_tokens:
            cost = self._prices.cost(record.model, input_tokens, output_tokens)
        self.windows.observe(
            key, now, error, latency_ms, record.ttft_ms, input_tokens, output_tokens, cost
        )
        totals = self._totals.get(key)
        if error:
            totals.errors += 1
        else:
            totals.ok += 1
        if latency_ms is not None:
            totals.observe_latency(latency_ms / 1000.0)
        if input_tokens:
            totals.input_tokens += input_tokens
        if output_tokens:
            totals.output_tokens += output_tokens
        totals.cost += cost
        stored_id = None
        if error or self._sampler.keep(record.id, record.metadata):
            stored_id = self._store.put_record(record, cost)
        if self.detector is not None:
            self.detector(record, now, stored_id, cost)
        return key[0]
