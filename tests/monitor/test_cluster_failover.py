"""A cluster as users run it (issue 14): three `lookout run` processes, one Mosquitto, one
PostgreSQL. The shared group splits the stream evenly; kill -9 of the leader hands every role
to a survivor within 10 s; kill -9 of a node and its restart lose and duplicate nothing; a
database restart mid-stream (every connection reset, refused meanwhile) loses nothing acked
and memory stays bounded."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import PrivateBroker, Receiver, eventually
from tests.monitor.cluster_procs import ROLES, Node, node_config, publish_records, role_holders
from tests.monitor.test_judge_client import OpenAIServer, server, tool_reply
from tests.monitor.test_pg_outage import TcpProxy, proxied_database
from tests.stores import StoreDb

FIRST = 3_000  # an undisturbed stream, for the split
SECOND = 6_000  # a stream through a leader's kill -9 and a node's kill -9 and restart
__all__ = ["server"]  # the judge's OpenAI-compatible server fixture


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path, broker: PrivateBroker, root: str, pg_url: str, **extra: Any
) -> AsyncIterator[list[Node]]:
    nodes = []
    for name in ("n1", "n2", "n3"):
        config, port = node_config(
            tmp_path / name, name, root=root, broker_url=broker.url, pg_url=pg_url, extra=extra
        )
        nodes.append(Node(f"{name}-{root}", config, port))
    try:
        await asyncio.gather(*(n.start() for n in nodes))
        yield nodes
    finally:
        codes = await asyncio.gather(*(n.stop() for n in nodes))
        assert codes == [0, 0, 0]  # SIGTERM drains and exits cleanly


def direct(url: str, proxy: TcpProxy) -> StoreDb:
    """The test's own queries bypass the proxy: they are synchronous, and the proxy runs on
    the test's event loop."""
    return StoreDb("postgres", url.replace(f"127.0.0.1:{proxy.port}", "127.0.0.1:5432"))


def stored(db: StoreDb) -> int:
    return db.count("SELECT COUNT(*) FROM records")


def shares(db: StoreDb) -> dict[str, int]:
    rows = db.query("SELECT node, SUM(count) FROM partials WHERE model = 'unknown' GROUP BY node")
    return {node: int(total) for node, total in rows}


async def publish(broker: PrivateBroker, root: str, first: int, count: int) -> None:
    await asyncio.to_thread(publish_records, broker.port, root, first, count)


async def every_role_held_by(nodes: list[Node], alive: list[Node], timeout_s: float) -> float:
    """Seconds until every role is held by one of `alive`."""
    names = {n.name for n in alive}
    started = time.monotonic()

    async def held() -> bool:
        holders = await role_holders(alive)
        return set(holders) == ROLES and set(holders.values()) <= names

    await eventually(held, timeout_s=timeout_s)
    return time.monotonic() - started


def assert_each_record_once(db: StoreDb, total: int) -> None:
    ids = [row[0] for row in db.query("SELECT id FROM records")]
    assert len(ids) == total and set(ids) == {f"seq-{i}" for i in range(total)}
    # ... and counted once in the cluster's stored minutes.
    assert sum(shares(db).values()) == total


@pytest.mark.timeout(300)
async def test_the_split_a_leaders_kill_9_and_a_nodes_restart(
    tmp_path: Path, private_broker: PrivateBroker, topic_root: str
) -> None:
    async with proxied_database() as (url, proxy):
        db = direct(url, proxy)
        async with cluster(tmp_path, private_broker, topic_root, url) as nodes:
            await every_role_held_by(nodes, nodes, timeout_s=15)
            await publish(private_broker, topic_root, 0, FIRST)
            await eventually(lambda: stored(db) >= FIRST, timeout_s=60)
            split = shares(db)
            assert sorted(split) == sorted(n.name for n in nodes)
            for count in split.values():  # round-robin: a third each, +-5%
                assert FIRST * (1 / 3 - 0.05) <= count <= FIRST * (1 / 3 + 0.05), split

            publisher = asyncio.ensure_future(publish(private_broker, topic_root, FIRST, SECOND))
            await eventually(lambda: stored(db) >= FIRST + 1_000, timeout_s=60)
            holders = await role_holders(nodes)
            (leader,) = [n for n in nodes if n.name == holders["alerts"]]
            await leader.kill_9()
            survivors = [n for n in nodes if n is not leader]
            took_s = await every_role_held_by(nodes, survivors, timeout_s=10)
            await leader.start()  # back as a standby; its share queued meanwhile arrives

            await eventually(lambda: stored(db) >= FIRST + 3_000, timeout_s=60)
            holders = await role_holders(nodes)
            other = next(n for n in nodes if n.name not in holders.values())
            await other.kill_9()
            await other.start()
            await asyncio.wait_for(publisher, 120)
            await eventually(lambda: stored(db) >= FIRST + SECOND, timeout_s=60)
        assert took_s < 10
        assert_each_record_once(db, FIRST + SECOND)


@pytest.mark.timeout(300)
async def test_a_database_restart_mid_stream_loses_nothing_acked(
    tmp_path: Path, private_broker: PrivateBroker, topic_root: str
) -> None:
    async with proxied_database() as (url, proxy):
        db = direct(url, proxy)
        extra = {"store": {"queue_size": 2_000, "queue_hard_limit": 4_000}}
        async with cluster(tmp_path, private_broker, topic_root, url, **extra) as nodes:
            await every_role_held_by(nodes, nodes, timeout_s=15)
            rss_before = [n.rss_bytes() for n in nodes]
            publisher = asyncio.ensure_future(publish(private_broker, topic_root, 0, SECOND))
            await eventually(lambda: stored(db) >= 1_000, timeout_s=60)
            await proxy.cut()  # every session reset: locks released, commits fail
            peak = [0, 0, 0]
            for _ in range(8):  # ~4 s down while the stream goes on
                await asyncio.sleep(0.5)
                peak = [max(p, n.rss_bytes()) for p, n in zip(peak, nodes, strict=True)]
            await proxy.restore()
            await asyncio.wait_for(publisher, 120)
            await eventually(lambda: stored(db) >= SECOND, timeout_s=90)
            await every_role_held_by(nodes, nodes, timeout_s=15)
        assert_each_record_once(db, SECOND)
        for before, high in zip(rss_before, peak, strict=True):
            assert high - before < 100 * 2**20  # bounded by the store's queue, not the outage


def alert_and_judge(hook_url: str, judge_url: str) -> dict[str, Any]:
    return {
        "channels": {"hook": {"kind": "webhook", "url": hook_url}},
        "rules": [
            {
                "name": "slow-shop",
                "metric": "latency_p95",
                "where": {"app": "shop"},
                "window": "5m",
                "op": ">",
                "threshold": 0.3,  # p95 of the first 300 records: ~0.38 s
                "for": "30s",
                "min_samples": 1,
                "channels": ["hook"],
            }
        ],
        "eval_interval": "1s",
        "judge": {
            "enabled": True,
            "model": "openai:judge",
            "base_url": judge_url,
            "api_key": "sk-test",
            "schedule": {"interval": "20s"},
            "sample_size": 1,
            "criteria": ["helpfulness"],
            "attempts": 1,
        },
    }


def judge_runs(db: StoreDb) -> int:
    return db.count("SELECT COUNT(*) FROM judge_runs WHERE trigger = 'schedule'")


def firing_keys(receiver: Receiver) -> list[str]:
    keys = []
    for headers, body in receiver.requests:
        if json.loads(body)["status"] == "firing":
            keys.append(headers["Idempotency-Key"])
    return keys


def pending_since(db: StoreDb) -> float | None:
    """The stored `active_since` of the rule's alert while it is pending (or firing)."""
    for (state,) in db.query("SELECT state FROM alert_states"):
        alert = json.loads(state)
        if alert["state"] in ("pending", "firing"):
            return float(alert["active_since"])
    return None


def starts_at(receiver: Receiver) -> float:
    (_, body) = receiver.requests[0]
    (alert,) = json.loads(body)["alerts"]
    return datetime.fromisoformat(alert["startsAt"]).timestamp()


@pytest.mark.timeout(400)
async def test_a_rule_and_the_judge_through_a_leaders_kill_9(
    tmp_path: Path,
    private_broker: PrivateBroker,
    topic_root: str,
    receiver: Receiver,
    server: OpenAIServer,
) -> None:
    grade = {"criterion": "helpfulness", "reasoning": "fine", "answer": True, "score": 0.9}
    server.respond = tool_reply([grade])  # type: ignore[method-assign,assignment]
    async with proxied_database() as (url, proxy):
        db = direct(url, proxy)
        extra = alert_and_judge(receiver.url, server.url)
        async with cluster(tmp_path, private_broker, topic_root, url, **extra) as nodes:
            await every_role_held_by(nodes, nodes, timeout_s=15)
            started = time.time()
            await publish(private_broker, topic_root, 0, 300)  # shop: p95 ~0.38 s
            await eventually(lambda: stored(db) >= 300, timeout_s=60)
            # Pending on the leader; kill it before `for: 30s` has passed.
            holders = await role_holders(nodes)
            (leader,) = [n for n in nodes if n.name == holders["alerts"]]
            await eventually(lambda: pending_since(db) is not None, timeout_s=30)
            active_since = pending_since(db)
            assert active_since is not None
            await leader.kill_9()
            survivors = [n for n in nodes if n is not leader]
            await every_role_held_by(nodes, survivors, timeout_s=10)
            await leader.start()
            await asyncio.wait_for(receiver.received.wait(), 60)
            fired_at = time.time()
            # Two minutes of the judge's 20 s schedule across the failover.
            await eventually(
                lambda: judge_runs(db) >= 6 and time.time() - started >= 120, timeout_s=150
            )
        keys = firing_keys(receiver)
        assert len(keys) == len(set(keys)) == 1  # once, not once per node or per leader
        assert starts_at(receiver) == pytest.approx(active_since, abs=1.0)
        # Fired 30 s after the stored active_since, not 30 s after the takeover.
        assert fired_at - active_since == pytest.approx(30.0, abs=8.0)
        ticks = db.query(
            "SELECT run_key, COUNT(*) FROM judge_runs WHERE trigger = 'schedule' GROUP BY run_key"
        )
        assert ticks and all(count == 1 for _, count in ticks)
        assert 4 <= len(ticks) <= 7  # one run per 20 s tick over ~2 minutes, not three
