"""Several nodes on one PostgreSQL database and one Mosquitto shared group, in one process:
each node reads the cluster-wide series, and lists the cluster's members."""

from __future__ import annotations

import json
import random
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from lookout.clock import FakeClock
from lookout.errors import ConfigError
from lookout.monitor.cli.cluster_status import cluster_table
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.metrics.windows import ALL, WindowStats
from tests.conftest import eventually, make_settings, publish, running, sample_value
from tests.stores import pg_database

T0 = 1_700_000_010.0  # 10 s into a minute
RECORDS = 600


def node_settings(tmp_path: Path, topic_root: str, node: str, pg_url: str) -> Settings:
    return make_settings(
        tmp_path / node,
        topic_root,
        node={"id": f"{node}-{topic_root}"},
        bus={"shared_group": f"g{topic_root}", "client_id": None},
        store={"url": pg_url},
        cluster={"heartbeat_interval": "1h", "refresh_interval": "1h", "alive_within": 15},
    )


def counted(d: Daemon) -> float:
    return sample_value(d, "lookout_records_total", {"app": "shop", "model": "m", "status": "ok"})


def shop(stats: list[WindowStats]) -> WindowStats:
    (found,) = [s for s in stats if s.app == "shop" and s.model == ALL]
    return found


def payloads() -> list[bytes]:
    rng = random.Random(14)
    return [
        json.dumps(
            {"id": f"r{i}", "app": "shop", "model": "m", "latency_ms": rng.uniform(100, 2000)}
        ).encode()
        for i in range(RECORDS)
    ]


async def test_nodes_read_the_cluster_wide_series_and_list_the_members(
    tmp_path: Path, topic_root: str
) -> None:
    clock = FakeClock(T0)
    with pg_database() as url:
        nodes = [Daemon(node_settings(tmp_path, topic_root, n, url), clock=clock) for n in "abc"]
        # One node fed the whole stream (its own subscription, its own SQLite store).
        alone = Daemon(make_settings(tmp_path / "alone", topic_root), clock=clock)
        assert all(n.cluster.enabled for n in nodes) and not alone.cluster.enabled
        a, b, c = nodes
        async with running(alone), running(a), running(b):
            async with running(c):
                await publish(payloads(), f"llm/records/{topic_root}")
                await eventually(lambda: sum(counted(d) for d in nodes) == RECORDS)
                await eventually(lambda: counted(alone) == RECORDS, alone)
                clock.advance(5.0)
                await _settle(nodes)
                _same_series_on_every_node(nodes, alone)
                await _members_listed(a, nodes)
            # A node that stops ages out: its heartbeat gets older than alive_within.
            clock.advance(16.0)
            for d in (a, b):
                await d.cluster.heartbeat.beat()
            view = await a.cluster.view.status()
            alive = {n.node: n.alive for n in view.nodes}
            assert alive.pop(c.settings.node.id) is False
            assert list(alive.values()) == [True, True]


async def _settle(nodes: list[Daemon]) -> None:
    """Every node's partials committed, read by the others, and its heartbeat written."""
    for d in nodes:
        await d.store.flush()
    for d in nodes:
        assert d.cluster.cluster_windows is not None
        await d.cluster.cluster_windows.refresh()
        await d.cluster.heartbeat.beat()


def _same_series_on_every_node(nodes: list[Daemon], alone: Daemon) -> None:
    whole = shop(alone.current_stats())
    for d in nodes:
        # Mosquitto hands the group's messages round-robin: a third each, +-5%.
        assert RECORDS * 0.283 <= counted(d) <= RECORDS * 0.383
        assert shop(d.current_stats()).count == counted(d)  # its own share
        merged = shop(d.cluster_stats())  # the whole cluster's, from any node
        assert merged.count == whole.count == RECORDS
        assert merged.qps == pytest.approx(whole.qps)
        assert whole.latency_p95 is not None
        assert merged.latency_p95 == pytest.approx(whole.latency_p95, rel=0.02)
        # What rules read: the same cluster-wide values.
        window_s = d.settings.metrics.default_window
        rule_series = {
            p.metric: p.value
            for p in d.cluster.windows.points(window_s, d.clock.now())
            if dict(p.labels) == {"app": "shop", "model": ALL}
        }
        assert rule_series["latency_p95"] == merged.latency_p95
        assert rule_series["qps"] == merged.qps
    # Only the leader (the alerts role's holder) exports the cluster-wide gauges, so a
    # Prometheus `sum by` over the nodes counts the traffic once.
    labels = {"app": "shop", "model": ALL}
    name = "lookout_cluster_requests_per_second"
    exported = {d.settings.node.id: d.registry.get_sample_value(name, labels) for d in nodes}
    (leader,) = [d for d in nodes if "alerts" in d.cluster.leadership.held()]
    assert exported.pop(leader.settings.node.id) == pytest.approx(whole.qps)
    assert list(exported.values()) == [None, None]


async def _members_listed(a: Daemon, nodes: list[Daemon]) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{a.api.port}") as http:  # type: ignore[union-attr]
        body = (await http.get("/api/v1/cluster")).json()
        status = (await http.get("/api/v1/status")).json()
    listed = {n["node"]: n for n in body["nodes"]}
    assert sorted(listed) == sorted(d.settings.node.id for d in nodes)
    assert all(n["alive"] for n in listed.values())
    assert sum(n["records_last_minute"] for n in listed.values()) == RECORDS
    assert all(0.283 <= n["share"] <= 0.383 for n in listed.values())
    held = sorted(role for n in listed.values() for role in n["roles"])
    assert held == sorted(["alerts", "judge", "retention", "references"])  # each by one node
    (series,) = [s for s in status["series"] if (s["app"], s["model"]) == ("shop", ALL)]
    assert series["count"] == RECORDS


async def test_cluster_enabled_needs_postgresql(tmp_path: Path, topic_root: str) -> None:
    with pytest.raises(ConfigError, match="needs a PostgreSQL store"):
        Daemon(make_settings(tmp_path, topic_root, cluster={"enabled": True}))


def test_status_lists_the_nodes_alive_or_not_and_their_shares() -> None:
    body = {
        "node": "n1",
        "cluster": True,
        "now": T0,
        "alive_within_s": 15.0,
        "nodes": [
            {
                "node": "n1",
                "version": "0.1.0",
                "started_at": T0 - 99,
                "heartbeat_at": T0 - 2,
                "alive": True,
                "records_last_minute": 300,
                "share": 0.5,
                "roles": ["alerts", "judge", "retention", "references"],
            },
            {
                "node": "n2",
                "version": "0.1.0",
                "started_at": T0 - 99,
                "heartbeat_at": T0 - 4,
                "alive": True,
                "records_last_minute": 300,
                "share": 0.5,
            },
            {
                "node": "n3",
                "version": "0.1.0",
                "started_at": T0 - 99,
                "heartbeat_at": T0 - 40,
                "alive": False,
                "records_last_minute": 280,
                "share": None,
                "roles": [],
            },
        ],
    }
    out = Console(record=True, width=120)
    out.print(cluster_table(body))
    lines = out.export_text().splitlines()
    row = {line.split()[0]: line.split() for line in lines if line.strip().startswith("n")}
    roles = ["alerts,", "judge,", "retention,", "references"]
    assert row["n1"][1:] == ["(this)", "yes", "2", "s", "ago", "300", "50%", "0.1.0", *roles]
    assert row["n3"][1:] == ["no", "40", "s", "ago", "280", "-", "0.1.0", "-"]
