"""Singleton roles on PostgreSQL: a session-level advisory lock per role, each on a connection of
its own (docs/scale-out.md "Leadership").

The lock lives exactly as long as its session: a node that is killed, loses its link or whose
server restarts no longer holds it, and the role's writes go through `fenced()`, on that same
session, so a leader whose session died cannot write another row (its write fails instead). Both
ends of the connection use short keepalives: the server notices a vanished client (and releases
its locks) in about 20 s, this node notices a vanished server as fast.

Advisory locks are scoped to the database, so clusters on different databases of one server do
not see each other's locks.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import structlog

from lookout.errors import StoreError
from lookout.monitor.config.masking import mask_url

log = structlog.get_logger(__name__)

# pg_try_advisory_lock(int4, int4): the first key says "lookout", the second the role.
LOCK_CLASS = int.from_bytes(b"lkou", "big")
_CHECK_TIMEOUT_S = 5.0
# libpq's keepalives (this end) and the server's, set for this session only.
_KEEPALIVES: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 15_000,
}
_SERVER_KEEPALIVES = (
    "-c tcp_keepalives_idle=5 -c tcp_keepalives_interval=2 -c tcp_keepalives_count=3"
    " -c tcp_user_timeout=15000"
)
_HOLDERS = (
    "SELECT l.objid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
    " WHERE l.locktype = 'advisory' AND l.classid = %s AND l.objsubid = 2 AND l.granted"
    " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class NotLeader(StoreError):
    """This node does not hold the role (any more): the write was not made."""


def application_name(node: str) -> str:
    """The session's name in pg_stat_activity: how other nodes see who holds a role."""
    return f"lookout-leader:{node}"[:63]


def node_of(application: str) -> str:
    return application.removeprefix("lookout-leader:")


async def role_holders(conn: psycopg.AsyncConnection[Any]) -> dict[int, str]:
    """Role number -> node id of the session that holds its lock, for every held role."""
    cur = await conn.execute(_HOLDERS, (LOCK_CLASS,))
    return {int(objid): node_of(str(name)) for objid, name in await cur.fetchall()}


class PgRoleLock:
    """One role's advisory lock and the session that holds it."""

    def __init__(self, url: str, role_key: int, *, node: str, connect_timeout_s: float) -> None:
        self._url = url
        self._where = mask_url(url)
        self._key = role_key
        self._node = node
        self._connect_timeout_s = connect_timeout_s
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._use = asyncio.Lock()  # one statement at a time on the session
        self.held = False

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        if self._conn is None or self._conn.closed:
            params: dict[str, Any] = {
                **_KEEPALIVES,
                "connect_timeout": max(1, round(self._connect_timeout_s)),
                "application_name": application_name(self._node),
                "options": _SERVER_KEEPALIVES,
            }
            self._conn = await psycopg.AsyncConnection.connect(self._url, autocommit=True, **params)
        return self._conn

    async def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False when another session does."""
        async with self._use:
            try:
                conn = await self._connect()
                cur = await conn.execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, self._key)
                )
                row = await cur.fetchone()
            except psycopg.Error as exc:
                await self._drop()
                raise StoreError(f"leadership lock at {self._where}: {exc}") from exc
            self.held = bool(row and row[0])
            return self.held

    async def still_held(self) -> bool:
        """Whether the session (and so the lock) is alive: a round trip under a timeout."""
        async with self._use:
            if not self.held or self._conn is None:
                return False
            try:
                async with asyncio.timeout(_CHECK_TIMEOUT_S):
                    await self._conn.execute("SELECT 1")
            except (psycopg.Error, TimeoutError):
                await self._drop()
                return False
            return True

    @contextlib.asynccontextmanager
    async def fenced(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A transaction on the lock's own session; NotLeader when the lock is not held or the
        session fails meanwhile (nothing of the transaction is then committed)."""
        async with self._use:
            if not self.held or self._conn is None:
                raise NotLeader(f"role {self._key} is not held by this node")
            try:
                async with self._conn.transaction():
                    yield self._conn
            except psycopg.OperationalError as exc:
                await self._drop()
                raise NotLeader(f"lost role {self._key}'s session: {exc}") from exc

    async def release(self) -> None:
        """Unlock and close (a clean stop hands the role over at once)."""
        async with self._use:
            if self._conn is not None and self.held:
                with contextlib.suppress(psycopg.Error):
                    await self._conn.execute(
                        "SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, self._key)
                    )
            await self._drop()

    async def _drop(self) -> None:
        self.held = False
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()
