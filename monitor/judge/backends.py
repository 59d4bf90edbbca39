"""The judge's stores on the store's backend: shared tables on PostgreSQL (a cluster's nodes
sample the same records and share runs, requests and verdicts), the store's own file on SQLite.
Built here for the daemon and for `lookout judge`, which must find the daemon's runs."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from lookout.monitor.storage.sqlite_evals import SqliteEvalStore
from lookout.monitor.storage.sqlite_judge import SqliteJudgeStore

if TYPE_CHECKING:
    from lookout.monitor.config import Settings
    from lookout.monitor.judge.eval_store import EvalStore
    from lookout.monitor.judge.store import JudgeStore
    from lookout.monitor.storage import Store


def on_postgres(settings: Settings) -> bool:
    return not settings.store.url.startswith("sqlite:")


@contextlib.asynccontextmanager
async def judge_stores(
    settings: Settings, store: Store
) -> AsyncIterator[tuple[JudgeStore, EvalStore]]:
    """The daemon's: on PostgreSQL through `store`'s pool (open while these are used)."""
    if on_postgres(settings):
        from lookout.monitor.storage.pg_evals import PgEvalStore
        from lookout.monitor.storage.pg_judge import PgJudgeStore
        from lookout.monitor.storage.postgres import PostgresStore

        assert isinstance(store, PostgresStore)
        yield PgJudgeStore(store.connection, node=settings.node.id), PgEvalStore(store.connection)
        return
    path = settings.store.local_path()
    async with SqliteJudgeStore(path) as judge, SqliteEvalStore(path) as evals:
        yield judge, evals


@contextlib.asynccontextmanager
async def command_store(settings: Settings) -> AsyncIterator[JudgeStore]:
    """A command's: on PostgreSQL one connection of its own."""
    if on_postgres(settings):
        from lookout.monitor.storage.pg_judge import PgJudgeStore, one_connection

        s = settings.store
        async with one_connection(s.url, connect_timeout_s=s.connect_timeout_s) as connect:
            yield PgJudgeStore(connect, node=settings.node.id)
        return
    async with SqliteJudgeStore(settings.store.local_path()) as judge:
        yield judge
