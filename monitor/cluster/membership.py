"""Membership: each node rewrites its row of the `nodes` table every few seconds (its
heartbeat), and reads everyone's to list the cluster. A node whose heartbeat is older than
`cluster.alive_within` is listed as not alive. Roles are held by locks, not by heartbeats
(leadership.py).

On SQLite (one node) the row is kept in memory: `/api/v1/cluster` lists this node alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType

import structlog

from lookout.clock import Clock
from lookout.errors import StoreError
from lookout.monitor.storage.base import PartialRow
from lookout.monitor.storage.nodes import ClusterStore, FencedRole, NodeRow

log = structlog.get_logger(__name__)
Sleep = Callable[[float], Awaitable[None]]


class SingleNode:
    """A `ClusterStore` for a node alone (a SQLite store): its own row, in memory."""

    def __init__(self) -> None:
        self._row: NodeRow | None = None

    async def peer_partials(self, since: float) -> list[PartialRow]:
        return []

    async def beat(self, row: NodeRow) -> None:
        self._row = row

    async def nodes(self) -> list[NodeRow]:
        return [] if self._row is None else [self._row]

    async def role_holders(self) -> dict[int, str]:
        return {}

    def use_retention_role(self, role: FencedRole) -> None:
        """A node alone prunes its own store."""


class Heartbeat:
    """Writes this node's row on entry and every `interval_s` until it exits."""

    def __init__(
        self,
        store: ClusterStore,
        clock: Clock,
        *,
        node: str,
        version: str,
        counted_last_minute: Callable[[float], int],
        interval_s: float = 5.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`counted_last_minute(now)`: the records this node counted in the minute to `now`."""
        self._store = store
        self._clock = clock
        self.node = self._node = node
        self._version = version
        self._counted = counted_last_minute
        self._interval_s = interval_s
        self._sleep = sleep
        self.started_at = clock.now()
        self._tasks = asyncio.TaskGroup()
        self._loop: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Heartbeat:
        await self.beat()
        await self._tasks.__aenter__()
        self._loop = self._tasks.create_task(self._run(), name="heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._loop is not None:
            self._loop.cancel()
        await self._tasks.__aexit__(exc_type, exc, tb)

    async def _run(self) -> None:
        while True:
            await self._sleep(self._interval_s)
            await self.beat()

    async def beat(self) -> None:
        """Write this node's row now; a store that cannot is logged, and retried next beat."""
        now = self._clock.now()
        row = NodeRow(self._node, self.started_at, now, self._version, self._counted(now))
        try:
            await self._store.beat(row)
        except StoreError as exc:
            log.warning("cluster_heartbeat_failed", error=str(exc))
