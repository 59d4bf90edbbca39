"""The alert outbox, alert states, silences and Slack threads on PostgreSQL: what a cluster's
nodes share for alerting (docs/scale-out.md "Alerting in a cluster").

Writes of the alert role (the evaluation's states and notifications) go through `fenced`, a
transaction on the role's advisory-lock session: a node that does not hold the role, or whose
session died, writes nothing. The (channel, idempotency_key) key is the notification log: an
entry a leader already enqueued is refused, not sent twice.

Any node delivers: `due` claims the head of each (channel, ordering key) line with
`FOR UPDATE SKIP LOCKED` and a lease (`claimed_by`, `lease_until`) longer than the sends ahead of
it, so two nodes never take the same row while the lease holds; `finish` and `retry_at` clear
it. A node that dies mid-send leaves a lease that runs out, and another node sends the row again
(at least once; receivers dedupe on the Idempotency-Key header, docs/webhooks.md). Times are the
nodes' clocks (epoch seconds): keep them in sync (NTP) to within a small part of a lease.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, Protocol, TypeVar

import psycopg
from psycopg import AsyncConnection

from lookout.alerts.outbox import CommitShortcuts, OutboxEntry, OutboxItem, OutboxStatus
from lookout.alerts.silences import Silence, silence_from_row, silence_to_row
from lookout.alerts.state import Alert, alert_from_json, alert_to_json
from lookout.errors import StoreError
from lookout.monitor.storage.pg_leases import NotLeader

T = TypeVar("T")
Fenced = Callable[[], contextlib.AbstractAsyncContextManager[AsyncConnection[Any]]]

_HISTORY_S = 30 * 86400.0  # finished rows and Slack threads kept this long
_LEASE_MARGIN_S = 10.0  # beyond the sends ahead of a row: the round trips to finish it
DEFAULT_SEND_TIMEOUT_S = 10.0

# The oldest pending row of each of the channel's (ordering key) lines: a resolution never
# overtakes the firing it follows, whichever node holds the firing one. One pass over the
# pending rows by the outbox_line index, once per claim (MATERIALIZED: inlined, the planner may
# run it again per row; a NOT EXISTS per row was as quadratic).
_HEADS = """SELECT DISTINCT ON (ordering_key) id, next_at, lease_until FROM outbox
    WHERE channel = %(channel)s AND status = 'pending' ORDER BY ordering_key, id"""

# The conditions on `o` are checked again on a row another node has just claimed (READ
# COMMITTED), so a claim never takes a row whose lease was set meanwhile. The k-th row claimed
# is sent after the k - 1 before it (each within the send timeout): its lease says so.
_CLAIM = f"""WITH heads AS MATERIALIZED ({_HEADS}),
picked AS (
    SELECT o.id FROM outbox AS o JOIN heads ON heads.id = o.id
    WHERE o.status = 'pending' AND o.next_at <= %(now)s
    AND (o.lease_until IS NULL OR o.lease_until <= %(now)s)
    ORDER BY o.id LIMIT %(limit)s FOR UPDATE OF o SKIP LOCKED),
ranked AS (SELECT id, row_number() OVER (ORDER BY id) AS k FROM picked)
UPDATE outbox SET claimed_by = %(node)s,
    lease_until = %(now)s + ranked.k * %(send_s)s + %(margin_s)s
FROM ranked WHERE outbox.id = ranked.id
RETURNING outbox.id, channel, idempotency_key, payload, created_at, attempts"""

_NEXT_DUE = f"""WITH heads AS ({_HEADS})
    SELECT MIN(GREATEST(next_at, COALESCE(lease_until, next_at))) FROM heads"""

_ENQUEUE = """INSERT INTO outbox
    (channel, idempotency_key, payload, created_at, next_at, ordering_key)
    VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (channel, idempotency_key) DO NOTHING"""

_SAVE_ALERT = """INSERT INTO alert_states VALUES (%s, %s, %s)
    ON CONFLICT (fingerprint) DO UPDATE SET rule = EXCLUDED.rule, state = EXCLUDED.state"""


class ConnectionUser(Protocol):
    """Runs `work` on a pooled connection, the driver's errors as StoreError (the store's)."""

    def __call__(self, work: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> Awaitable[T]: ...


def _no_session() -> contextlib.AbstractAsyncContextManager[AsyncConnection[Any]]:
    raise NotLeader("alerts: this process does not hold the alert role")


class PgOutbox(CommitShortcuts):
    """`lookout.alerts.outbox.Outbox` on the store's pool (and the alert role's session)."""

    def __init__(
        self,
        use: ConnectionUser,
        *,
        node: str,
        fenced: Fenced | None = None,
        send_timeout_s: Mapping[str, float] | None = None,
        claim_limit: int = 20,
    ) -> None:
        """`fenced` None: a process that never leads (the CLI): the role's writes are refused.
        `send_timeout_s`: per channel, how long one send may take (its lease per row)."""
        self._use = use
        self._node = node
        self._fenced = fenced or _no_session
        self._send_timeout_s = dict(send_timeout_s or {})
        self._claim_limit = claim_limit

    @contextlib.asynccontextmanager
    async def _role(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A transaction on the alert role's session; the driver's errors as StoreError."""
        try:
            async with self._fenced() as conn:
                yield conn
        except psycopg.Error as exc:
            raise StoreError(f"alert state on PostgreSQL: {exc}") from exc

    async def commit(
        self, alerts: Sequence[Alert], entries: Sequence[OutboxEntry], now: float
    ) -> list[OutboxEntry]:
        """States and notifications in one fenced transaction; the entries refused as
        duplicates (another leader enqueued them) are returned."""
        states = [(a.fingerprint, a.rule, alert_to_json(a)) for a in alerts]
        refused: list[OutboxEntry] = []
        async with self._role() as conn:
            if states:
                async with conn.cursor() as cur:
                    await cur.executemany(_SAVE_ALERT, states)
            for e in entries:
                body = json.dumps(e.payload, separators=(",", ":"))
                args = (e.channel, e.idempotency_key, body, now, now, e.ordering_key)
                cur = await conn.execute(_ENQUEUE, args)
                if cur.rowcount != 1:
                    refused.append(e)
        return refused

    async def due(self, channel: str, now: float, limit: int = 100) -> list[OutboxItem]:
        """Claims the channel's due heads of line for this node, oldest first."""
        args = {
            "channel": channel,
            "now": now,
            "limit": min(limit, self._claim_limit),
            "node": self._node,
            "send_s": self._send_timeout_s.get(channel, DEFAULT_SEND_TIMEOUT_S),
            "margin_s": _LEASE_MARGIN_S,
        }

        async def work(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            async with conn.transaction():
                cur = await conn.execute(_CLAIM, args)
                return await cur.fetchall()

        rows = sorted(await self._use(work))
        return [OutboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    async def release(self, item_ids: Collection[int]) -> None:
        sql = (
            "UPDATE outbox SET claimed_by = NULL, lease_until = NULL"
            " WHERE id = ANY(%s) AND claimed_by = %s AND status = 'pending'"
        )
        if item_ids:
            await self._execute(sql, (list(item_ids), self._node))

    async def next_due_at(self, channel: str) -> float | None:
        (row,) = await self._fetch(_NEXT_DUE, {"channel": channel})
        return None if row[0] is None else float(row[0])

    async def finish(self, item_id: int, status: OutboxStatus, now: float, error: str = "") -> None:
        sql = (
            "UPDATE outbox SET status = %s, done_at = %s, last_error = %s,"
            " attempts = attempts + 1, claimed_by = NULL, lease_until = NULL WHERE id = %s"
        )
        await self._execute(sql, (status.value, now, error or None, item_id))

    async def retry_at(self, item_id: int, next_at: float, error: str) -> None:
        sql = (
            "UPDATE outbox SET next_at = %s, attempts = attempts + 1, last_error = %s,"
            " claimed_by = NULL, lease_until = NULL WHERE id = %s"
        )
        await self._execute(sql, (next_at, error, item_id))

    async def fail_unknown_channels(self, channels: Collection[str], now: float) -> int:
        sql = (
            "UPDATE outbox SET status = 'failed', done_at = %s, last_error = 'no such channel'"
            " WHERE status = 'pending' AND channel <> ALL(%s)"
        )
        return await self._execute(sql, (now, list(channels)))

    async def expire(self, channel: str, older_than: float, now: float) -> int:
        async def work(conn: AsyncConnection[Any]) -> int:
            async with conn.transaction():
                cur = await conn.execute(
                    "UPDATE outbox SET status = 'expired', done_at = %s, claimed_by = NULL,"
                    " lease_until = NULL WHERE status = 'pending' AND channel = %s"
                    " AND created_at < %s",
                    (now, channel, older_than),
                )
                cutoff = now - _HISTORY_S
                await conn.execute(
                    "DELETE FROM outbox WHERE status <> 'pending' AND done_at < %s", (cutoff,)
                )
                await conn.execute("DELETE FROM message_threads WHERE created_at < %s", (cutoff,))
                return cur.rowcount

        return await self._use(work)

    async def message_ids(self, channel: str, alert_keys: Collection[str]) -> dict[str, str]:
        if not alert_keys:
            return {}
        sql = (
            "SELECT alert_key, message_id FROM message_threads"
            " WHERE channel = %s AND alert_key = ANY(%s)"
        )
        return {k: m for k, m in await self._fetch(sql, (channel, list(alert_keys)))}

    async def remember_message(
        self, channel: str, message_id: str, alert_keys: Collection[str], now: float
    ) -> None:
        rows = [(channel, key, message_id, now) for key in alert_keys]

        async def work(conn: AsyncConnection[Any]) -> None:
            async with conn.transaction(), conn.cursor() as cur:
                await cur.executemany(
                    "INSERT INTO message_threads VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    rows,
                )

        await self._use(work)

    async def load_alerts(self) -> list[Alert]:
        return [alert_from_json(r[0]) for r in await self._fetch("SELECT state FROM alert_states")]

    async def add_silence(self, silence: Silence) -> None:
        await self._execute(
            "INSERT INTO silences VALUES (%s, %s, %s, %s, %s, %s)", silence_to_row(silence)
        )

    async def silences(self, active_at: float | None = None) -> list[Silence]:
        sql = "SELECT id, rule, matchers, starts_at, ends_at, comment FROM silences"
        args: tuple[float, ...] = ()
        if active_at is not None:
            sql += " WHERE starts_at <= %s AND ends_at > %s"
            args = (active_at, active_at)
        return [silence_from_row(r) for r in await self._fetch(sql + " ORDER BY ends_at", args)]

    async def expire_silence(self, silence_id: str, now: float) -> bool:
        sql = "UPDATE silences SET ends_at = %s WHERE id = %s AND ends_at > %s"
        return await self._execute(sql, (now, silence_id, now)) > 0

    async def depth(self) -> tuple[int, float | None]:
        sql = "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status = 'pending'"
        ((count, oldest),) = await self._fetch(sql)
        return int(count), oldest

    async def _fetch(self, sql: str, args: Any = ()) -> list[tuple[Any, ...]]:
        async def work(conn: AsyncConnection[Any]) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, args)
            return await cur.fetchall()

        return await self._use(work)

    async def _execute(self, sql: str, args: Any) -> int:
        async def work(conn: AsyncConnection[Any]) -> int:
            return (await conn.execute(sql, args)).rowcount

        return await self._use(work)
