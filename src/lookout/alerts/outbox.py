"""The durable outbox: a notification is committed to disk before any attempt to send it.

SQLite with `synchronous=FULL` on a connection of its own (one thread), so a notification that
`enqueue` returned for survives kill -9 and a power cut; a worker then sends, retries with capped
jittered backoff, and marks it delivered, failed (a final answer) or expired (too old).
Enqueueing the same (channel, idempotency key) twice keeps one row.
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lookout.alerts.state import Alert, AlertState
from lookout.durations import parse_duration_s
from lookout.sqlite_thread import SqliteThread

if TYPE_CHECKING:
    from types import TracebackType


_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL, idempotency_key TEXT NOT NULL,
    payload TEXT NOT NULL, created_at REAL NOT NULL, next_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, status TEXT NOT NULL DEFAULT 'pending',
    last_error TEXT, done_at REAL, UNIQUE (channel, idempotency_key)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_at);
CREATE TABLE IF NOT EXISTS silences (
    id TEXT PRIMARY KEY, rule TEXT, matchers TEXT NOT NULL, starts_at REAL NOT NULL,
    ends_at REAL NOT NULL, comment TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS alert_states (
    fingerprint TEXT PRIMARY KEY, rule TEXT NOT NULL, state TEXT NOT NULL
);
"""


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
class Silence:
    """Mutes notifications (not state) of alerts whose rule and labels match, until `ends_at`."""

    id: str
    rule: str | None  # None: any rule
    matchers: dict[str, str]
    starts_at: float
    ends_at: float
    comment: str = ""

    def mutes(self, rule: str, labels: dict[str, str], now: float) -> bool:
        if not self.starts_at <= now < self.ends_at:
            return False
        if self.rule is not None and self.rule != rule:
            return False
        return all(labels.get(k) == v for k, v in self.matchers.items())


def silence_from_request(body: object, now: float) -> Silence:
    """A silence from `{"rule"?, "matchers"?, "duration"? | "ends_at"?, "comment"?}`."""
    if not isinstance(body, dict):
        raise ValueError("a silence is a JSON object")
    rule = body.get("rule")
    matchers = body.get("matchers", {})
    if rule is not None and not isinstance(rule, str):
        raise ValueError("rule must be a string")
    if not isinstance(matchers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in matchers.items()
    ):
        raise ValueError("matchers must map label names to values")
    if rule is None and not matchers:
        raise ValueError("a silence needs a rule, matchers, or both")
    if "ends_at" in body:
        ends_at = float(body["ends_at"])
    else:
        ends_at = now + parse_duration_s(body.get("duration", "1h"))
    if ends_at <= now:
        raise ValueError("the silence would end before it starts")
    comment = str(body.get("comment", ""))[:500]
    return Silence(uuid.uuid4().hex[:12], rule, matchers, now, ends_at, comment)


class SqliteOutbox:
    def __init__(self, path: Path) -> None:
        # synchronous=FULL: an enqueue that returned survives a crash or a power cut.
        self._sql = SqliteThread(path, schema=_SCHEMA, synchronous="FULL", name="lookout-outbox")
        self._run = self._sql.run
        self._conn = self._sql.conn

    async def __aenter__(self) -> SqliteOutbox:
        await self._sql.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._sql.close()

    async def enqueue(
        self, channel: str, idempotency_key: str, payload: dict[str, Any], now: float
    ) -> None:
        body = json.dumps(payload, separators=(",", ":"))
        sql = (
            "INSERT OR IGNORE INTO outbox (channel, idempotency_key, payload, created_at, next_at)"
            " VALUES (?, ?, ?, ?, ?)"
        )
        await self._run(
            lambda: self._conn().execute(sql, (channel, idempotency_key, body, now, now))
        )

    async def due(self, now: float, limit: int = 100) -> list[OutboxItem]:
        sql = (
            "SELECT id, channel, idempotency_key, payload, created_at, attempts FROM outbox"
            " WHERE status = 'pending' AND next_at <= ? ORDER BY id LIMIT ?"
        )
        rows = await self._run(lambda: self._conn().execute(sql, (now, limit)).fetchall())
        return [OutboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    async def next_due_at(self) -> float | None:
        sql = "SELECT MIN(next_at) FROM outbox WHERE status = 'pending'"
        row = await self._run(lambda: self._conn().execute(sql).fetchone())
        return None if row[0] is None else float(row[0])

    async def finish(self, item_id: int, status: OutboxStatus, now: float, error: str = "") -> None:
        sql = (
            "UPDATE outbox SET status = ?, done_at = ?, last_error = ?, attempts = attempts + 1"
            " WHERE id = ?"
        )
        await self._run(
            lambda: self._conn().execute(sql, (status.value, now, error or None, item_id))
        )

    async def retry_at(self, item_id: int, next_at: float, error: str) -> None:
        sql = "UPDATE outbox SET next_at = ?, attempts = attempts + 1, last_error = ? WHERE id = ?"
        await self._run(lambda: self._conn().execute(sql, (next_at, error, item_id)))

    async def expire(self, older_than: float, now: float) -> int:
        sql = (
            "UPDATE outbox SET status = 'expired', done_at = ? WHERE status = 'pending'"
            " AND created_at < ?"
        )
        cur = await self._run(lambda: self._conn().execute(sql, (now, older_than)))
        return cur.rowcount

    async def save_alerts(self, alerts: list[Alert]) -> None:
        """Upsert alert states, so a restart neither re-fires nor forgets a firing alert."""
        rows = [(a.fingerprint, a.rule, json.dumps(asdict(a))) for a in alerts]

        def work() -> None:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO alert_states VALUES (?, ?, ?)", rows)

        await self._run(work)

    async def load_alerts(self) -> list[Alert]:
        sql = "SELECT state FROM alert_states"
        rows = await self._run(lambda: self._conn().execute(sql).fetchall())
        alerts = []
        for (state,) in rows:
            fields = json.loads(state)
            fields["labels"] = tuple(tuple(pair) for pair in fields["labels"])
            fields["state"] = AlertState(fields["state"])
            alerts.append(Alert(**fields))
        return alerts

    async def add_silence(self, silence: Silence) -> None:
        sql = "INSERT INTO silences VALUES (?, ?, ?, ?, ?, ?)"
        args = (silence.id, silence.rule, json.dumps(silence.matchers), silence.starts_at,
                silence.ends_at, silence.comment)  # fmt: skip
        await self._run(lambda: self._conn().execute(sql, args))

    async def silences(self, active_at: float | None = None) -> list[Silence]:
        """All silences, or those in force at `active_at`."""
        sql = "SELECT id, rule, matchers, starts_at, ends_at, comment FROM silences"
        args: tuple[float, ...] = ()
        if active_at is not None:
            sql += " WHERE starts_at <= ? AND ends_at > ?"
            args = (active_at, active_at)
        rows = await self._run(
            lambda: self._conn().execute(sql + " ORDER BY ends_at", args).fetchall()
        )
        return [Silence(r[0], r[1], json.loads(r[2]), r[3], r[4], r[5]) for r in rows]

    async def expire_silence(self, silence_id: str, now: float) -> bool:
        sql = "UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?"
        cur = await self._run(lambda: self._conn().execute(sql, (now, silence_id, now)))
        return cur.rowcount > 0

    async def depth(self) -> tuple[int, float | None]:
        """Pending notifications and the creation time of the oldest."""
        sql = "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status = 'pending'"
        count, oldest = await self._run(lambda: self._conn().execute(sql).fetchone())
        return int(count), oldest
