"""The outbox on SQLite, for a node alone (alerts/outbox.py has the interface): a file of
its own at `store.local_path()`, `synchronous=FULL` on a connection of its own (one thread), so
a notification that `enqueue` returned for survives kill -9 and a power cut."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from lookout.alerts.outbox import CommitShortcuts, OutboxEntry, OutboxItem, OutboxStatus
from lookout.alerts.silences import Silence, silence_from_row, silence_to_row
from lookout.alerts.state import Alert, alert_from_json, alert_to_json
from lookout.monitor.storage.schema import migrate_sqlite
from lookout.sqlite_thread import SqliteBacked, SqliteThread

# Pending rows that are the oldest pending of their (channel, ordering key): a resolved
# notification never overtakes the firing one it follows, even while that one waits to retry.
_HEAD_OF_LINE = """status = 'pending' AND NOT EXISTS (
    SELECT 1 FROM outbox AS earlier WHERE earlier.channel = outbox.channel
    AND earlier.ordering_key = outbox.ordering_key AND earlier.status = 'pending'
    AND earlier.id < outbox.id)"""


class SqliteOutbox(CommitShortcuts, SqliteBacked):
    def __init__(self, path: Path) -> None:
        # synchronous=FULL: an enqueue that returned survives a crash or a power cut.
        self._sql = SqliteThread(
            path, migrate=migrate_sqlite, synchronous="FULL", name="lookout-outbox"
        )
        self._run = self._sql.run
        self._conn = self._sql.conn

    async def commit(
        self, alerts: Sequence[Alert], entries: Sequence[OutboxEntry], now: float
    ) -> list[OutboxEntry]:
        """One evaluation's changed alerts and notifications in one transaction: a crash
        leaves both or neither. Returns the entries refused as duplicates."""
        states = [(a.fingerprint, a.rule, alert_to_json(a)) for a in alerts]
        sql = (
            "INSERT OR IGNORE INTO outbox"
            " (channel, idempotency_key, payload, created_at, next_at, ordering_key)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        rows = [
            (e.channel, e.idempotency_key, _json(e.payload), now, now, e.ordering_key)
            for e in entries
        ]

        def work() -> list[OutboxEntry]:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.executemany("INSERT OR REPLACE INTO alert_states VALUES (?, ?, ?)", states)
                return [e for e, row in zip(entries, rows, strict=True) if not _new(db, sql, row)]

        return await self._run(work)

    async def due(self, channel: str, now: float, limit: int = 100) -> list[OutboxItem]:
        """The channel's notifications to try now, oldest first, each first in its line."""
        sql = (
            "SELECT id, channel, idempotency_key, payload, created_at, attempts FROM outbox"
            f" WHERE channel = ? AND next_at <= ? AND {_HEAD_OF_LINE} ORDER BY id LIMIT ?"
        )
        rows = await self._run(lambda: self._conn().execute(sql, (channel, now, limit)).fetchall())
        return [OutboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5]) for r in rows]

    async def release(self, item_ids: Collection[int]) -> None:
        """Nothing to give back: a node alone claims nothing."""

    async def next_due_at(self, channel: str) -> float | None:
        sql = f"SELECT MIN(next_at) FROM outbox WHERE channel = ? AND {_HEAD_OF_LINE}"
        row = await self._run(lambda: self._conn().execute(sql, (channel,)).fetchone())
        return None if row[0] is None else float(row[0])

    async def fail_unknown_channels(self, channels: Collection[str], now: float) -> int:
        """Pending notifications for channels no longer configured: failed, not retried forever."""
        marks = ",".join("?" * len(channels))
        sql = (
            "UPDATE outbox SET status = 'failed', done_at = ?, last_error = 'no such channel'"
            f" WHERE status = 'pending' AND channel NOT IN ({marks})"
        )
        cur = await self._run(lambda: self._conn().execute(sql, (now, *channels)))
        return cur.rowcount

    async def message_ids(self, channel: str, alert_keys: Collection[str]) -> dict[str, str]:
        """Receiver-side ids of the messages that announced these alerts (to thread under)."""
        if not alert_keys:
            return {}
        marks = ",".join("?" * len(alert_keys))
        sql = (
            "SELECT alert_key, message_id FROM message_threads"
            f" WHERE channel = ? AND alert_key IN ({marks})"
        )
        args = (channel, *alert_keys)
        rows = await self._run(lambda: self._conn().execute(sql, args).fetchall())
        return dict(rows)

    async def remember_message(
        self, channel: str, message_id: str, alert_keys: Collection[str], now: float
    ) -> None:
        rows = [(channel, key, message_id, now) for key in alert_keys]

        def work() -> None:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                db.executemany("INSERT OR IGNORE INTO message_threads VALUES (?, ?, ?, ?)", rows)

        await self._run(work)

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

    async def expire(self, channel: str, older_than: float, now: float) -> int:
        """Give up on the channel's notifications created before `older_than`; drop finished
        history after 30 days."""
        sql = (
            "UPDATE outbox SET status = 'expired', done_at = ? WHERE status = 'pending'"
            " AND channel = ? AND created_at < ?"
        )
        history_s = 30 * 86400.0

        def work() -> int:
            db = self._conn()
            with db:
                db.execute("BEGIN")
                expired = db.execute(sql, (now, channel, older_than)).rowcount
                db.execute(
                    "DELETE FROM outbox WHERE status != 'pending' AND done_at < ?",
                    (now - history_s,),
                )
                db.execute("DELETE FROM message_threads WHERE created_at < ?", (now - history_s,))
            return int(expired)

        return await self._run(work)

    async def load_alerts(self) -> list[Alert]:
        sql = "SELECT state FROM alert_states"
        rows = await self._run(lambda: self._conn().execute(sql).fetchall())
        return [alert_from_json(state) for (state,) in rows]

    async def add_silence(self, silence: Silence) -> None:
        sql = "INSERT INTO silences VALUES (?, ?, ?, ?, ?, ?)"
        args = silence_to_row(silence)
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
        return [silence_from_row(r) for r in rows]

    async def expire_silence(self, silence_id: str, now: float) -> bool:
        sql = "UPDATE silences SET ends_at = ? WHERE id = ? AND ends_at > ?"
        cur = await self._run(lambda: self._conn().execute(sql, (now, silence_id, now)))
        return cur.rowcount > 0

    async def depth(self) -> tuple[int, float | None]:
        """Pending notifications and the creation time of the oldest."""
        sql = "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE status = 'pending'"
        count, oldest = await self._run(lambda: self._conn().execute(sql).fetchone())
        return int(count), oldest


def _new(db: Any, sql: str, row: tuple[Any, ...]) -> bool:
    return bool(db.execute(sql, row).rowcount == 1)


def _json(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))
