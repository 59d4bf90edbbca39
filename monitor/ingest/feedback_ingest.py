"""Where feedback messages go: decode, de-duplicate, redact, count, store.

MQTT messages reach it through `Pipeline.route` (their topic matches `bus.feedback_topics`),
HTTP bodies through `POST /api/v1/feedback`. Every accepted event goes into the store's open
commit group, so its message is acknowledged (or its request answered) only once it is
committed, as records are.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import msgspec
from paho.mqtt.client import topic_matches_sub

from lookout.monitor.config import FeedbackConfig
from lookout.monitor.ingest.feedback import (
    Feedback,
    app_from_feedback_topic,
    decode_feedback,
)
from lookout.monitor.ingest.pipeline import IngestResult
from lookout.monitor.ingest.records import DecodeLimits
from lookout.monitor.metrics.feedback import FeedbackMetrics, FeedbackWindows
from lookout.monitor.storage import Store
from lookout.series import SeriesPoint

Identity = tuple[str, str, str, str]


class RecentFeedback:
    """The last `capacity` events: their identities, to spot repeats, and per record how many
    of its events were negative, to set users' opinion beside the judge's."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[Identity, bool] = OrderedDict()
        self._records: dict[tuple[str, str], list[int]] = {}  # (negative, all) events

    def seen(self, identity: Identity) -> bool:
        return identity in self._seen

    def add(self, identity: Identity, negative: bool) -> None:
        if not self._capacity:
            return
        self._seen[identity] = negative
        self._count(identity, negative, 1)
        if len(self._seen) > self._capacity:
            self._count(*self._seen.popitem(last=False), -1)

    def _count(self, identity: Identity, negative: bool, step: int) -> None:
        record = (identity[0], identity[1])
        tally = self._records.setdefault(record, [0, 0])
        tally[0] += step * negative
        tally[1] += step
        if not tally[1]:
            del self._records[record]

    def user_verdict(self, app: str, record_id: str) -> bool | None:
        """True if a record's users were content (no negative event), False if not, None
        without feedback on it (among the last `capacity` events)."""
        tally = self._records.get((app, record_id))
        return None if tally is None else tally[0] == 0


class FeedbackIngest:
    def __init__(  # noqa: PLR0917 - one of each collaborator
        self,
        cfg: FeedbackConfig,
        topics: list[str],
        windows: FeedbackWindows,
        store: Store,
        metrics: FeedbackMetrics,
        limits: DecodeLimits,
        redact: Callable[[str], str],
    ) -> None:
        self._cfg = cfg
        self._topics = topics
        self._routes: dict[str, bool] = {}
        self.windows = windows
        self._store = store
        self._metrics = metrics
        self._limits = limits
        self._redact = redact
        self._recent = RecentFeedback(cfg.dedupe)

    async def restore(self, now: float) -> None:
        """After a restart: the stored events' identities (their redeliveries are duplicates)
        and the windows' counts over the longest window."""
        for f in await self._store.feedback.recent(self._cfg.dedupe):
            self._recent.add((f.app, f.record_id, f.key, f.user_id), f.negative)
        for f in await self._store.feedback.since(now - self.windows.max_window_s):
            self.windows.observe(f.app, f.key, f.score, f.negative, f.received_at)

    def routes(self, topic: str) -> bool:
        """Is a message on `topic` feedback? Memoised: a deployment has few topics."""
        routed = self._routes.get(topic)
        if routed is None:
            routed = any(topic_matches_sub(f, topic) for f in self._topics)
            if len(self._routes) < 10_000:
                self._routes[topic] = routed
        return routed

    def route(self, payload: bytes, topic: str, source: str, now: float) -> IngestResult | None:
        """A message from the bus: processed here if its topic is a feedback topic, else None."""
        if not self.routes(topic):
            return None
        return self.process_payload(
            payload, app_from_feedback_topic(topic, self._topics), source, now
        )

    def process_payload(
        self, payload: bytes, topic_app: str | None, source: str, now: float
    ) -> IngestResult:
        decoded = decode_feedback(
            payload, topic_app, now, self._limits, self._cfg.max_comment_chars
        )
        rejected = []
        for r in decoded.rejections:
            self._metrics.rejected.labels(r.reason.value).inc(r.count)
            self._store.put_rejected(r, f"{source}-feedback", now)
            rejected.append((r.reason.value, r.detail))
        accepted = duplicates = 0
        for event in decoded.events:
            if self._recent.seen(event.identity):
                duplicates += 1
                continue
            accepted += 1
            self._accept(event, now)
        self._metrics.accepted.inc(accepted)
        self._metrics.duplicates.inc(duplicates)
        return IngestResult(accepted, duplicates, rejected)

    def _accept(self, event: Feedback, now: float) -> None:
        if event.comment:
            event = msgspec.structs.replace(event, comment=self._redact(event.comment))
        negative = self._cfg.negative(event.key, event.score)
        self._recent.add(event.identity, negative)
        self._store.feedback.put(event, negative)
        self.windows.observe(event.app, event.key, event.score, negative, now)

    def user_verdict(self, app: str, record_id: str) -> bool | None:
        """Were a record's users content with it? None without (recent) feedback on it."""
        return self._recent.user_verdict(app, record_id)

    def points(self, window_s: float, now: float) -> list[SeriesPoint]:
        """The feedback series over the window ending at `now` (rules, status, /metrics)."""
        self.windows.prune(now)
        return self.windows.points(window_s, now)
