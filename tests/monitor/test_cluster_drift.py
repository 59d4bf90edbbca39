"""Drift and OOD across the nodes of a cluster, on a real PostgreSQL (docs/scale-out.md "Drift
and OOD across nodes"): the node holding the alerts role scores drift on every node's texts,
a reference fitted by the references role's holder is loaded by the others, and each node
scores OOD on the texts it got."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.detectors.embedders import Embedder
from lookout.monitor.cluster.leadership import Leadership, Role
from lookout.monitor.config import DetectorsConfig, Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.detection.embedding import build_embedder
from lookout.monitor.detection.service import DetectionService
from lookout.monitor.detection.shared_drift import ClusterDetection
from lookout.monitor.ingest.records import Record
from lookout.monitor.storage.drift_samples import DriftSample
from lookout.monitor.storage.pg_leases import PgRoleLock
from lookout.monitor.storage.pg_references import PgReferenceStore
from lookout.monitor.storage.schema import migrate_postgres
from tests.conftest import Receiver, eventually, make_settings, publish, running
from tests.monitor.test_detection import DETECTORS, prompts
from tests.stores import StoreDb, pg_database

TIMEOUT_S = 30.0
WINDOW = DETECTORS["drift"]["window"]  # type: ignore[index]
CFG = DetectorsConfig.model_validate(DETECTORS)


@pytest.fixture
def db_url() -> Iterator[str]:
    with pg_database() as url:
        yield url


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return build_embedder(CFG.embedder)


@dataclass
class Node:
    name: str
    service: DetectionService
    registry: CollectorRegistry
    leadership: Leadership | None

    def offer(self, texts: list[str]) -> None:
        now = time.time()
        for text in texts:
            record = Record(
                id=None, ts=now, app="bot", model="m", status="ok", received_at=now, prompt=text
            )
            self.service.offer(record, now)

    def status(self) -> dict[str, Any]:
        [status] = self.service.status(600, time.time())
        return status

    def series(self) -> dict[str, float | None]:
        return {s.metric: s.value for s in self.service.series(600, time.time())}

    def counter(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0


@contextlib.asynccontextmanager
async def node(
    url: str, name: str, embedder: Embedder, *, clustered: bool = True, **sharing: Any
) -> AsyncIterator[Node]:
    """One node's detectors on the shared database; in the cluster, with its leadership."""
    registry = CollectorRegistry()
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await migrate_postgres(conn)  # as the node's main store does when it opens
    async with contextlib.AsyncExitStack() as stack:
        lead = None
        cluster = None
        fence = None
        if clustered:
            locks = {r: PgRoleLock(url, r.value, node=name, connect_timeout_s=5.0) for r in Role}
            lead = Leadership(locks, retry_interval_s=0.05, check_interval_s=0.05)  # type: ignore[arg-type]
            await stack.enter_async_context(lead)
            fence = lead.gate(Role.REFERENCES).fenced
        refs = await stack.enter_async_context(PgReferenceStore(url, node=name, fence=fence))
        if lead is not None:
            cluster = ClusterDetection(
                node=name,
                samples=refs.samples,
                drift=lead.gate(Role.ALERTS),
                references=lead.gate(Role.REFERENCES),
                **{
                    "flush_interval_s": 0.02,
                    "read_interval_s": 0.02,
                    "keep_texts": 2 * WINDOW,
                    **sharing,
                },
            )
        service = DetectionService(
            CFG,
            embedder=embedder,
            references=refs,
            clock=SystemClock(),
            registry=registry,
            poll_interval_s=0.05,
            cluster=cluster,
        )
        await stack.enter_async_context(service)
        yield Node(name, service, registry, lead)


async def holds_every_role(n: Node) -> None:
    assert n.leadership is not None
    for gate in n.leadership.gates.values():
        await asyncio.wait_for(gate.wait_held(), TIMEOUT_S)


async def settled(leader: Node, other: Node, other_texts: int) -> None:
    """Both nodes worked off their texts, the other node committed the `other_texts` it
    scored and the leader read them."""
    for n in (leader, other):
        await asyncio.wait_for(n.service.wait_idle(), TIMEOUT_S)
    await eventually(
        lambda: leader.counter("lookout_drift_samples_read_total") == other_texts,
        timeout_s=TIMEOUT_S,
    )


async def test_the_leader_scores_drift_on_both_nodes_texts_as_one_node_fed_all_of_them(
    db_url: str, embedder: Embedder
) -> None:
    banking = prompts({"banking", "credit_cards"}, 200 + 120)
    travel = prompts({"travel", "auto_and_commute"}, 40)
    # A quiet stretch, then a burst of another topic: too short for half of it to move a
    # window of one node's share, long enough to move the cluster's.
    stream = banking[200:] + travel[:24] + banking[200:216]
    async with contextlib.AsyncExitStack() as stack_b, contextlib.AsyncExitStack() as stack_a:
        a = await stack_a.enter_async_context(node(db_url, "a", embedder))
        await holds_every_role(a)
        b = await stack_b.enter_async_context(node(db_url, "b", embedder))
        b.offer(banking[:50])  # not the references' holder: collects nothing to fit
        a.offer(banking[:200])
        await asyncio.wait_for(a.service.wait_idle(), TIMEOUT_S)
        fitted = a.status()["reference_id"]
        assert fitted is not None
        await eventually(lambda: b.status()["reference_id"] == fitted, timeout_s=TIMEOUT_S)
        assert b.status()["reference_pending"] is None
        for start in range(0, len(stream), WINDOW // 2):  # chunk by chunk, half each
            chunk = stream[start : start + WINDOW // 2]
            a.offer(chunk[0::2])
            b.offer(chunk[1::2])
            await settled(a, b, len(stream[: start + len(chunk)][1::2]))
        leader, standby = a.series(), b.series()
        # OOD on the node that got the text; the leader's rate counts both nodes'.
        assert b.status()["ood_scored"] == len(stream) // 2
        assert a.status()["ood_scored"] == len(stream)
        shipped = "lookout_drift_samples_shipped_total"
        await eventually(lambda: a.counter(shipped) == len(stream) // 2, timeout_s=TIMEOUT_S)
        await stack_a.aclose()  # the leader stops: the other node takes the drift over,
        await eventually(lambda: bool(b.series()), timeout_s=TIMEOUT_S)
        # its window made anew from the shared samples
        taken_over = b.series()
    assert standby == {}  # only the leader reports drift
    with psycopg.connect(db_url, autocommit=True) as conn:  # one node fed from scratch:
        conn.execute("DELETE FROM detector_windows")  # not the cluster's saved windows
    async with node(db_url, "whole", embedder, clustered=False) as whole:
        whole.offer(stream)
        await asyncio.wait_for(whole.service.wait_idle(), TIMEOUT_S)
        one_node = whole.series()
    async with node(db_url, "half", embedder, clustered=False) as half:
        half.offer(stream[0::2])
        await asyncio.wait_for(half.service.wait_idle(), TIMEOUT_S)
        half_only = half.series()
    assert leader["drift_statistic"] == pytest.approx(one_node["drift_statistic"], rel=0.02)
    assert leader["drift_score"] > 1 and one_node["drift_score"] > 1  # type: ignore[operator]
    assert half_only["drift_score"] < 1  # type: ignore[operator]
    assert taken_over["drift_statistic"] == pytest.approx(leader["drift_statistic"], rel=0.02)


def cluster_node(tmp_path: Path, topic_root: str, name: str, url: str, hook: str) -> Settings:
    return make_settings(
        tmp_path / name,
        topic_root,
        node={"id": f"{name}-{topic_root}"},
        bus={"shared_group": f"g{topic_root}", "client_id": None},
        store={"url": url},
        cluster={
            "heartbeat_interval": "1h",
            "refresh_interval": "1h",
            "leader_retry_interval": 0.2,
        },
        # A longer run between false alarms than the other tests': this one counts alerts.
        detectors={**DETECTORS, "drift": {"window": WINDOW, "ert": 2000}},
        eval_interval=0.05,
        channels={"hook": {"kind": "webhook", "url": hook}},
        rules=[
            {
                "name": "topic-drift",
                "metric": "drift_score",
                "where": {"app": "bot"},
                "threshold": 1.0,
                "channels": ["hook"],
            }
        ],
    )


def records(texts: list[str], first: int) -> list[bytes]:
    return [
        json.dumps({"id": f"r{first + i}", "app": "bot", "model": "m", "prompt": t}).encode()
        for i, t in enumerate(texts)
    ]


async def test_two_daemons_share_the_reference_and_the_leader_alerts_on_the_clusters_drift(
    tmp_path: Path, topic_root: str, receiver: Receiver
) -> None:
    banking = prompts({"banking", "credit_cards"}, 440 + 120)
    travel = prompts({"travel", "auto_and_commute"}, 24)
    burst = banking[440:] + travel + banking[440:456]
    topic = f"llm/records/{topic_root}"
    with pg_database() as url:
        a, b = (Daemon(cluster_node(tmp_path, topic_root, n, url, receiver.url)) for n in "ab")
        async with running(a):
            await asyncio.wait_for(a.cluster.leadership.gate(Role.ALERTS).wait_held(), 15)
            async with running(b):
                assert a.detection is not None and b.detection is not None
                await publish(records(banking[:440], 0), topic)  # about half to each node
                await eventually(lambda: _reference(a) is not None, timeout_s=TIMEOUT_S)
                await eventually(lambda: _reference(b) == _reference(a), timeout_s=TIMEOUT_S)
                await publish(records(burst, 1000), topic)
                await eventually(lambda: "firing" in _statuses(receiver), timeout_s=TIMEOUT_S)
                assert b.detection.series(600, time.time()) == []  # only the leader's count
                db = StoreDb("postgres", url)
                scored = (
                    "SELECT COUNT(*) FROM records WHERE ood_score IS NOT NULL"
                    " AND CAST(SUBSTRING(id, 2) AS INT) >= 1000"
                )
                # Every record of the burst scored, on whichever node got it.
                await eventually(lambda: db.count(scored) == len(burst), timeout_s=TIMEOUT_S)
                nodes = "SELECT COUNT(DISTINCT node) FROM drift_samples"
                await eventually(lambda: db.count(nodes) == 2, timeout_s=TIMEOUT_S)


def _statuses(receiver: Receiver) -> list[str]:
    return [
        alert["status"] for _, body in receiver.requests for alert in json.loads(body)["alerts"]
    ]


def _reference(d: Daemon) -> int | None:
    assert d.detection is not None
    entries = d.detection.status(600, time.time())
    return entries[0]["reference_id"] if entries else None


async def test_shared_samples_are_bounded_and_every_drop_is_counted(
    db_url: str, embedder: Embedder
) -> None:
    banking = prompts({"banking", "credit_cards"}, 200 + 300)
    # PostgreSQL slower than the texts come (here: no flush at all): at most 50 texts wait.
    async with node(db_url, "a", embedder, max_pending_texts=50, flush_interval_s=3600) as a:
        await holds_every_role(a)
        a.offer(banking[:200])
        await asyncio.wait_for(a.service.wait_idle(), TIMEOUT_S)
        for start in range(200, 500, 30):  # batches of 30: one sample each
            a.offer(banking[start : start + 30])
            await asyncio.wait_for(a.service.wait_idle(), TIMEOUT_S)
        dropped = a.registry.get_sample_value(
            "lookout_drift_samples_dropped_total", {"reason": "buffer_full"}
        )
        assert dropped == 300 - 30  # one batch of 30 fits under 50, the other nine do not
    # The rows a node keeps: its newest `keep_texts` per (app, field), none older than max age.
    async with PgReferenceStore(db_url, node="a") as refs:
        x = np.zeros((30, 8), np.float16)
        now = time.time()
        fresh = [DriftSample("a", "bot", "p", 1, now, 0, x) for _ in range(5)]
        await refs.samples.put([*fresh, DriftSample("a", "bot", "o", 1, now - 7200, 0, x)])
        assert await refs.samples.prune(now - 3600, keep_texts=60) == 3 * 30 + 30
        kept = [(s.field, s.n) for s in await refs.samples.latest(10_000)]
        # The two newest rows of "p", and the 30 texts of "prompt" a's final flush committed.
        assert sorted(kept) == [("p", 30), ("p", 30), ("prompt", 30)]
