"""ClusterWindows on a real PostgreSQL store: the other nodes' minutes join this node's
windows, a late commit into an older minute is picked up by the next full read, and rates
divide by the span the data covers."""

from __future__ import annotations

import asyncio
import math

from fastdigest import TDigest
from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.monitor.cluster.leadership import Leadership, Role
from lookout.monitor.cluster.windows import ClusterWindows
from lookout.monitor.config import Settings
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.metrics.windows import ALL, WindowedMetrics
from lookout.monitor.storage import PartialRow
from lookout.monitor.storage.nodes import NodeRow
from lookout.monitor.storage.pg_leases import PgRoleLock
from lookout.monitor.storage.postgres import PostgresStore
from tests.stores import pg_database

T0 = 1_700_000_040.0  # on a minute boundary


def store(url: str, node: str, clock: FakeClock) -> PostgresStore:
    cfg = Settings.model_validate({"store": {"url": url}}).store
    return PostgresStore(cfg, IngestMetrics(CollectorRegistry()), clock, node=node)


def minute_row(minute: float, count: int, latency_s: float) -> PartialRow:
    lat = bytes(TDigest.from_values([latency_s] * count).to_bytes())
    return PartialRow(int(minute), "shop", "m", count, 0, 0, 0, 0, 0.0, lat, None, None)


def windows(started_at: float) -> WindowedMetrics:
    return WindowedMetrics(bucket_s=10.0, max_window_s=900.0, started_at=started_at)


def shop(cluster: ClusterWindows, window_s: float, now: float) -> tuple[int, float, float]:
    (s,) = [s for s in cluster.query(window_s, now) if (s.app, s.model) == ("shop", ALL)]
    assert s.latency_p95 is not None
    return s.count, s.qps, s.latency_p95


async def test_other_nodes_minutes_join_and_a_late_commit_is_read_within_a_minute() -> None:
    clock = FakeClock(T0 + 125.0)  # in the third minute
    local = windows(T0)
    for i in range(60):  # this node: 60 records of 0.1 s in the first minute
        local.observe(("shop", "m"), T0 + i, False, 100.0, None, None, None, 0.0)
    local.take_open()  # committed
    with pg_database() as url:
        async with store(url, "a", clock) as a, store(url, "b", clock) as b:
            await b.beat(NodeRow("b", T0, T0, "x", 0))
            b.put_partials([minute_row(T0, 60, 1.0), minute_row(T0 + 60, 60, 1.0)])
            await b.flush()
            cluster = ClusterWindows(
                local, a, clock, lambda: windows(math.inf), node="a", refresh_interval_s=5.0
            )
            await cluster.refresh()
            count, qps, p95 = shop(cluster, 300.0, clock.now())
            # 180 records over the 125 s since the first node started; b's latencies are
            # the slower third, so p95 is theirs.
            assert count == 180
            assert qps == 180 / 125.0
            assert p95 == 1.0
            # a's own windows are unchanged: its share only.
            (own,) = [
                s for s in local.query(300.0, clock.now()) if (s.app, s.model) == ("shop", ALL)
            ]
            assert own.count == 60
            # b commits late into the first minute: an ordinary refresh reads the last two
            # minutes only; the full read (once a minute) takes it.
            b.put_partials([minute_row(T0, 30, 1.0)])
            await b.flush()
            counts = []
            for _ in range(12):
                await cluster.refresh()
                counts.append(shop(cluster, 300.0, clock.now())[0])
            assert counts[0] == 180 and counts[-1] == 210


async def test_a_node_silent_longer_than_the_retention_leaves_the_list() -> None:
    clock = FakeClock(T0)
    with pg_database() as url:
        async with store(url, "a", clock) as a:
            await a.beat(NodeRow("gone", T0 - 9000, T0 - 8000, "x", 5))
            await a.beat(NodeRow("quiet", T0 - 9000, T0 - 3000, "x", 0))
            await a.beat(NodeRow("a", T0 - 100, T0, "x", 7))
            await a.prune(T0)  # store.retention: 7 days by default
            assert [n.node for n in await a.nodes()] == ["a", "gone", "quiet"]
            await a.prune(T0 + 7 * 86400 - 5000)
            assert [n.node for n in await a.nodes()] == ["a", "quiet"]


async def test_only_the_retention_role_holder_prunes_and_on_its_lock_session() -> None:
    clock = FakeClock(T0)
    with pg_database() as url:
        lead_a = Leadership({Role.RETENTION: PgRoleLock(url, 3, node="a", connect_timeout_s=5)})
        lead_b = Leadership({Role.RETENTION: PgRoleLock(url, 3, node="b", connect_timeout_s=5)})
        async with store(url, "a", clock) as a, store(url, "b", clock) as b, lead_a:
            await asyncio.wait_for(lead_a.gate(Role.RETENTION).wait_held(), 10.0)
            async with lead_b:
                a.use_retention_role(lead_a.gate(Role.RETENTION))
                b.use_retention_role(lead_b.gate(Role.RETENTION))
                await a.beat(NodeRow("gone", T0 - 9000, T0 - 8000, "x", 5))
                later = T0 + 7 * 86400
                await b.prune(later)  # not the holder: prunes nothing
                assert [n.node for n in await a.nodes()] == ["gone"]
                await a.prune(later)
                assert await a.nodes() == []
