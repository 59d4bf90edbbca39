"""The alert outbox on each backend for tests: the node's SQLite file, or PostgreSQL (a database
of the test's own) with the alert role's writes on a real advisory-lock session."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.monitor.cluster.leadership import Role
from lookout.monitor.config import Settings
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage.pg_leases import PgRoleLock
from lookout.monitor.storage.pg_outbox import PgOutbox
from lookout.monitor.storage.postgres import PostgresStore
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox


def pg_store(url: str, node: str = "a") -> PostgresStore:
    cfg = Settings.model_validate({"store": {"url": url}}).store
    return PostgresStore(cfg, IngestMetrics(CollectorRegistry()), FakeClock(0.0), node=node)


def alerts_lock(url: str, node: str) -> PgRoleLock:
    return PgRoleLock(url, Role.ALERTS.value, node=node, connect_timeout_s=5.0)


@contextlib.asynccontextmanager
async def opened(where: str) -> AsyncIterator[SqliteOutbox | PgOutbox]:
    """The outbox at `where` (a SQLite path or a PostgreSQL URL), opened as a leader would."""
    if not where.startswith("postgresql://"):
        async with SqliteOutbox(Path(where)) as outbox:
            yield outbox
        return
    lock = alerts_lock(where, "a")
    async with pg_store(where) as store:
        assert await lock.try_acquire()
        try:
            yield store.outbox(fenced=lock.fenced)
        finally:
            await lock.release()
