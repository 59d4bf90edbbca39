"""Log records waiting for their span: the two arrive in separate requests, in either order.

Instrumentations that put prompts and completions in log records (upstream's GenAI events)
export them with the SDK's log processor, whose timer is not the span processor's. Logs that
arrive first wait here, keyed by (trace id, span id), until their span takes them; they expire
after `ttl_s` and the buffer holds at most `max_records`, the oldest dropped first. Both drops
are counted. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from lookout.monitor.ingest.otlp_decode import OtlpLog

SpanKey = tuple[str, str]  # (trace id, span id), hex
_MAX_LOGS_PER_SPAN = 64  # one call's messages; more is not one call
_MAX_APPS = 1_000


@dataclass(slots=True)
class _Entry:
    first_seen: float
    logs: list[OtlpLog]


class LogBuffer:
    def __init__(self, max_records: int, ttl_s: float) -> None:
        self._max_records = max_records
        self._ttl_s = ttl_s
        self._entries: OrderedDict[SpanKey, _Entry] = OrderedDict()
        self._size = 0
        self._log_apps: OrderedDict[str, float] = OrderedDict()
        self.expired = 0  # records dropped unclaimed after ttl_s
        self.dropped = 0  # records dropped for room (the buffer full, or a span's share)

    def __len__(self) -> int:
        return self._size

    def add(self, log: OtlpLog, app: str | None, now: float) -> bool:
        """Keep `log` for its span; False if it was dropped at once."""
        self.expire(now)
        if not (log.trace_id and log.span_id) or self._max_records == 0:
            self.dropped += 1
            return False
        self._log_apps[app or ""] = now
        self._log_apps.move_to_end(app or "")
        if len(self._log_apps) > _MAX_APPS:
            self._log_apps.popitem(last=False)
        key = (log.trace_id, log.span_id)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = _Entry(now, [])
        if len(entry.logs) >= _MAX_LOGS_PER_SPAN:
            self.dropped += 1
            return False
        entry.logs.append(log)
        self._size += 1
        while self._size > self._max_records:
            _, oldest = self._entries.popitem(last=False)
            self._size -= len(oldest.logs)
            self.dropped += len(oldest.logs)
        return True

    def take(self, key: SpanKey) -> list[OtlpLog]:
        """The logs of one span, which leave the buffer."""
        entry = self._entries.pop(key, None)
        if entry is None:
            return []
        self._size -= len(entry.logs)
        return entry.logs

    def has(self, key: SpanKey) -> bool:
        return key in self._entries

    @property
    def apps_sending_logs(self) -> int:
        return len(self._log_apps)

    def sends_logs(self, app: str | None, now: float) -> bool:
        """Whether `app` sent content log records within `ttl_s`: its spans may wait for them."""
        seen = self._log_apps.get(app or "")
        return seen is not None and now - seen <= self._ttl_s

    def expire(self, now: float) -> int:
        expired = 0
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.first_seen <= self._ttl_s:
                break
            del self._entries[key]
            self._size -= len(entry.logs)
            expired += len(entry.logs)
        self.expired += expired
        return expired
