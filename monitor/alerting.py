"""Where alerting keeps its state, and the engine the daemon runs: the outbox, alert states and
silences in the node's SQLite file for a node alone, in PostgreSQL for a cluster
(docs/scale-out.md "Alerting in a cluster"), with the alert role's writes fenced on its lock
session and evaluation gated by that role."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx
from prometheus_client import CollectorRegistry

from lookout.alerts.engine import AlertEngine, ChannelNotifier
from lookout.alerts.notifiers import build_notifier
from lookout.alerts.outbox import Outbox
from lookout.clock import SystemClock
from lookout.monitor.anomaly import AnomalyBook
from lookout.monitor.cluster.leadership import Role
from lookout.monitor.cluster.node import cluster_enabled
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage import Store, open_store
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox

if TYPE_CHECKING:
    from lookout.alerts.rules import SeriesSource
    from lookout.clock import Clock
    from lookout.monitor.cluster.node import NodeCluster
    from lookout.monitor.config import Settings
    from lookout.monitor.storage.postgres import PostgresStore


def _send_timeouts(settings: Settings) -> dict[str, float]:
    return {name: c.timeout_s for name, c in settings.channels.items()}


def open_outbox(
    settings: Settings, store: Store, cluster: NodeCluster
) -> contextlib.AbstractAsyncContextManager[Outbox]:
    """PostgreSQL's tables when the cluster is on (the alert role's writes on its session);
    else the node's SQLite file, as for one node."""
    if not cluster.enabled:
        return SqliteOutbox(settings.store.local_path())
    gate = cluster.leadership.gate(Role.ALERTS)
    outbox = _postgres(store).outbox(fenced=gate.fenced, send_timeout_s=_send_timeouts(settings))
    # Nothing to open or close: the pool is the store's, the lock session the leadership's.
    return contextlib.nullcontext(outbox)


def _postgres(store: Store) -> PostgresStore:
    from lookout.monitor.storage.postgres import PostgresStore

    assert isinstance(store, PostgresStore)  # a cluster needs a PostgreSQL store
    return store


@contextlib.asynccontextmanager
async def outbox_for_cli(settings: Settings) -> AsyncIterator[Outbox]:
    """The silences `lookout silence` edits: where the daemons read them. A CLI never leads,
    so on PostgreSQL it writes no alert state."""
    if not cluster_enabled(settings):
        async with SqliteOutbox(settings.store.local_path()) as outbox:
            yield outbox
        return
    from lookout.monitor.logs import configure_logging

    configure_logging("warning", json=False)  # the command's output, not the store's info
    store = open_store(
        settings.store, IngestMetrics(CollectorRegistry()), SystemClock(), node=settings.node.id
    )
    async with store:
        yield _postgres(store).outbox()


@dataclass(frozen=True, slots=True)
class Alerting:
    outbox: Outbox
    anomaly: AnomalyBook | None
    engine: AlertEngine


async def build_alerting(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    *,
    store: Store,
    cluster: NodeCluster,
    clock: Clock,
    registry: CollectorRegistry,
    series: SeriesSource,
) -> Alerting:
    """The outbox, the channels' notifiers and the anomaly book entered on `stack`; the engine
    (not yet running), evaluating while this node holds the alert role."""
    s = settings
    outbox = await stack.enter_async_context(open_outbox(s, store, cluster))
    http = await stack.enter_async_context(httpx.AsyncClient())
    notifiers: dict[str, ChannelNotifier] = {}
    for name, channel in s.channels.items():
        notifiers[name] = await stack.enter_async_context(
            build_notifier(name, channel, http=http, clock=clock, posted_messages=outbox)
        )
    anomaly = None
    if any(r.op == "anomaly" for r in s.rules):
        book = AnomalyBook(
            s.rules,
            store,
            now=clock.now,
            checkpoint_path=s.store.local_path().with_suffix(".anomaly.json"),
        )
        anomaly = await stack.enter_async_context(book.running())
    engine = AlertEngine(
        s.rules,
        notifiers,
        series=series,
        outbox=outbox,
        clock=clock,
        registry=registry,
        eval_interval_s=s.eval_interval,
        external_url=s.api.external_url or "",
        max_age_s={name: c.max_age for name, c in s.channels.items()},
        anomaly=anomaly,
        leader=cluster.leadership.gate(Role.ALERTS),
    )
    return Alerting(outbox, anomaly, engine)
