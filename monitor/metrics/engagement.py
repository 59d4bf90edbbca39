"""Engagement per app: distinct users and sessions per window, and how sessions went.

Distinct counts come from HyperLogLog sketches (Apache DataSketches): one per app and bucket
(a minute by default) for users and one for session ids, a few KiB each however many ids they
saw; a window's count is the union of its buckets' sketches, with the sketch's documented error
(about 1.04 / sqrt(2^lg_k): 2.3 % at one standard deviation for the default lg_k 11).

A session is one `session_id` of one app until it has been idle for `idle_gap_s`; a request
after that starts a new one. Sessions are measured when they end (the moment the gap passed):
how many requests they had and how long they lasted, from first to last request (found by a
scan at most every minute, so they show up to a minute late). Open sessions are bounded
(`max_open_sessions`): past it the least recently active ones end early, counted in `evicted`.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple, Protocol

import datasketches
from fastdigest import TDigest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lookout.series import SeriesPoint

_HLL = datasketches.tgt_hll_type.HLL_8
_CENTROIDS = 100
_SEEN_USERS = 1024


class Ids(Protocol):
    """What engagement reads of a record."""

    @property
    def user_id(self) -> str | None: ...
    @property
    def session_id(self) -> str | None: ...


class _Request(NamedTuple):
    user_id: str | None
    session_id: str | None


class _Bucket:
    __slots__ = (
        "durations_s",
        "end",
        "ended",
        "index",
        "requests",
        "seen_users",
        "sessions",
        "start",
        "users",
    )

    def __init__(self, index: int, bucket_s: float) -> None:
        self.index = index
        self.start = index * bucket_s
        self.end = self.start + bucket_s
        self.users: datasketches.hll_sketch | None = None
        # The current bucket's first user ids: a repeat skips the sketch (a set lookup is a
        # third of a sketch update, and most users send several requests a minute).
        self.seen_users: set[str] | None = set()
        self.sessions: datasketches.hll_sketch | None = None
        self.ended = 0  # sessions that ended in this bucket
        self.requests = 0  # their requests
        self.durations_s: TDigest | None = None


class EngagementWindows:
    """Not thread-safe: owned by the ingest loop."""

    def __init__(
        self,
        *,
        bucket_s: float = 60.0,
        max_window_s: float = 3600.0,
        lg_k: int = 11,
        idle_gap_s: float = 1800.0,
        max_open_sessions: int = 100_000,
    ) -> None:
        self.bucket_s = bucket_s
        self.max_window_s = max_window_s
        self.lg_k = lg_k
        self.idle_gap_s = idle_gap_s
        self._max_open = max_open_sessions
        self._cells: dict[str, dict[int, _Bucket]] = {}
        self._current: dict[str, _Bucket] = {}  # each app's newest bucket: the usual one
        # app -> session id -> [first request, last request, requests]; unordered, so a
        # request costs two dict lookups: idle sessions are found by a scan now and then.
        self._open: dict[str, dict[str, list[float]]] = {}
        self._open_count = 0
        self._scan_every_s = min(bucket_s, idle_gap_s / 4)
        self._scanned_at = -math.inf
        self.evicted = 0

    def observe(self, app: str, user_id: str | None, session_id: str | None, now: float) -> None:
        """One request of `app` (folded label) at `now` by a user, in a session (either None)."""
        self.observe_many(app, [_Request(user_id, session_id)], now)

    def observe_many(self, app: str, records: Sequence[Ids], now: float) -> None:
        """`observe` for each record in turn, all of `app` at `now` (a message's records):
        the same updates in the same order, with the bucket and the app's sessions looked up
        once. About 2.5k instructions a record with both ids in batches of 50, half the
        per-record path's (docs/benchmarks.md)."""
        bucket = self._current.get(app)
        if bucket is None or not bucket.start <= now < bucket.end:
            bucket = self._bucket(app, now)
        # Neither changes below: a session ending (in `_start`) lands in a bucket at or
        # before `now`'s, so this app's current bucket stays the same one.
        seen = bucket.seen_users
        open_of_app = self._open.get(app)
        if open_of_app is None:
            open_of_app = self._open[app] = {}
        start, gap = bucket.start, self.idle_gap_s
        for record in records:
            user_id = record.user_id
            if user_id is not None and (seen is None or user_id not in seen):
                self._new_user(bucket, user_id)
            session_id = record.session_id
            if session_id is None:
                continue
            session = open_of_app.get(session_id)
            if session is None or now - session[1] > gap:
                self._start(app, session_id, session, now)
            elif now >= session[1]:
                if session[1] >= start:  # already in this bucket's sketch
                    session[1] = now
                    session[2] += 1
                    continue
                session[1] = now
                session[2] += 1
            else:
                session[2] += 1  # out of order (a replay): counted, its length unchanged
            self._new_session(bucket, session_id)

    def _new_user(self, bucket: _Bucket, user_id: str) -> None:
        seen = bucket.seen_users
        if seen is not None and len(seen) < _SEEN_USERS:
            seen.add(user_id)
        users = bucket.users
        if users is None:
            users = bucket.users = datasketches.hll_sketch(self.lg_k, _HLL)
        users.update(user_id)

    def _new_session(self, bucket: _Bucket, session_id: str) -> None:
        sessions = bucket.sessions
        if sessions is None:
            sessions = bucket.sessions = datasketches.hll_sketch(self.lg_k, _HLL)
        sessions.update(session_id)

    def _start(self, app: str, session_id: str, idle: list[float] | None, now: float) -> None:
        if idle is not None:  # the same id after the gap: the old session ended
            self._end(app, idle, idle[1] + self.idle_gap_s)
        else:
            self._open_count += 1
        self._open[app][session_id] = [now, now, 1]
        if self._open_count > self._max_open:
            self.end_idle(now, force=True)
        if self._open_count > self._max_open:
            # Still full: end the least recently active hundredth early, counted.
            idlest = heapq.nsmallest(
                max(1, self._max_open // 100), self._all_open(), key=lambda s: s[2][1]
            )
            for app_of, sid, session in idlest:
                self._close(app_of, sid, session, now)
            self.evicted += len(idlest)

    def _all_open(self) -> list[tuple[str, str, list[float]]]:
        return [(app, sid, s) for app, of_app in self._open.items() for sid, s in of_app.items()]

    def _close(self, app: str, session_id: str, session: list[float], at: float) -> None:
        del self._open[app][session_id]
        self._open_count -= 1
        self._end(app, session, at)

    def _end(self, app: str, session: list[float], at: float) -> None:
        bucket = self._bucket(app, at)
        bucket.ended += 1
        bucket.requests += int(session[2])
        if bucket.durations_s is None:
            bucket.durations_s = TDigest(max_centroids=_CENTROIDS)
        bucket.durations_s.update(session[1] - session[0])

    def end_idle(self, now: float, *, force: bool = False) -> None:
        """End the sessions idle for longer than the gap, each at the moment the gap passed.
        A scan of the open sessions: at most every `min(bucket, gap / 4)` unless forced."""
        if not force and now - self._scanned_at < self._scan_every_s:
            return
        self._scanned_at = now
        gap = self.idle_gap_s
        idle = [s for s in self._all_open() if now - s[2][1] > gap]
        for app, sid, session in sorted(idle, key=lambda s: s[2][1]):
            self._close(app, sid, session, session[1] + gap)

    def _bucket(self, app: str, at: float) -> _Bucket:
        buckets = self._cells.setdefault(app, {})
        index = int(at // self.bucket_s)
        bucket = buckets.get(index)
        if bucket is None:
            bucket = buckets[index] = _Bucket(index, self.bucket_s)
            oldest = index - int(self.max_window_s // self.bucket_s) - 1
            for old in [i for i in buckets if i < oldest]:
                del buckets[old]
        current = self._current.get(app)
        if current is None or index >= current.index:
            if current is not None and current is not bucket:
                current.seen_users = None  # only the current bucket keeps its ids
            self._current[app] = bucket
        return bucket

    def points(self, window_s: float, now: float) -> list[SeriesPoint]:
        """active_users, active_sessions, requests_per_session and session_duration_p50/p95
        per app over the window ending at `now` (buckets whose start lies in it)."""
        self.end_idle(now)
        first = math.ceil((now - min(window_s, self.max_window_s)) / self.bucket_s - 1e-9)
        last = int(now // self.bucket_s)
        out: list[SeriesPoint] = []
        for app, buckets in sorted(self._cells.items()):
            inside = [b for b in buckets.values() if first <= b.index <= last]
            if inside:
                out += self._app_points(app, inside)
        return out

    def _app_points(self, app: str, buckets: list[_Bucket]) -> list[SeriesPoint]:
        labels = (("app", app),)
        out = []
        for name, attr in (("active_users", "users"), ("active_sessions", "sessions")):
            sketches = [getattr(b, attr) for b in buckets if getattr(b, attr) is not None]
            if sketches:
                union = datasketches.hll_union(self.lg_k)
                for sketch in sketches:
                    union.update(sketch)
                estimate = round(union.get_result().get_estimate())
                out.append(SeriesPoint(name, labels, float(estimate), estimate))
        ended = sum(b.ended for b in buckets)
        if ended:
            durations = TDigest(max_centroids=_CENTROIDS)
            for b in buckets:
                if b.durations_s is not None:
                    durations.merge_inplace(b.durations_s)
            requests = sum(b.requests for b in buckets)
            out += [
                SeriesPoint("requests_per_session", labels, requests / ended, ended),
                SeriesPoint("session_duration_p50", labels, float(durations.quantile(0.5)), ended),
                SeriesPoint("session_duration_p95", labels, float(durations.quantile(0.95)), ended),
            ]
        return out

    def memory_bytes(self) -> int:
        """What the sketches and open sessions hold, about (sketch bytes as serialised)."""
        sketches: int = sum(
            s.get_updatable_serialization_bytes()
            for buckets in self._cells.values()
            for b in buckets.values()
            for s in (b.users, b.sessions)
            if s is not None
        )
        return sketches + self._open_count * 200

    def open_sessions(self) -> int:
        return self._open_count


_GAUGES = {
    "active_users": ("lookout_active_users", "Distinct users over the default window"),
    "active_sessions": ("lookout_active_sessions", "Distinct sessions over the default window"),
    "requests_per_session": (
        "lookout_requests_per_session",
        "Mean requests of the sessions that ended in the window",
    ),
    "session_duration_p50": (
        "lookout_session_duration_p50_seconds",
        "Median length of the sessions that ended in the window",
    ),
    "session_duration_p95": (
        "lookout_session_duration_p95_seconds",
        "95th percentile length of the sessions that ended in the window",
    ),
}


class EngagementCollector(Collector):
    """The default window's engagement series as gauges, at scrape time."""

    def __init__(self, points: Callable[[], list[SeriesPoint]], evicted: Callable[[], int]) -> None:
        self._points = points
        self._evicted = evicted

    def collect(self) -> Iterable[Metric]:
        families = {
            name: GaugeMetricFamily(metric, doc, labels=["app"])
            for name, (metric, doc) in _GAUGES.items()
        }
        for p in self._points():
            if p.value is not None:
                families[p.metric].add_metric([dict(p.labels)["app"]], p.value)
        evicted = CounterMetricFamily(
            "lookout_sessions_evicted",
            "Sessions ended early: engagement.max_open_sessions were open",
            value=self._evicted(),
        )
        return [*families.values(), evicted]
