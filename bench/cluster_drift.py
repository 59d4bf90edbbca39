"""Drift on a cluster's traffic (issue 14): what sharing the sampled embeddings costs, one
node alone against 1 and 3 nodes of a cluster on one PostgreSQL database.

Each round runs N nodes' detectors in this process (the static embedder, every text admitted),
each on its own detection thread with its own leadership on a fresh database: node 0 takes
every role, fits the reference from the first texts, the others load it. Then T CLINC150
prompts are offered round-robin in chunks (each chunk worked off and, in a cluster, read by the
leader before the next). It prints, per embedded text: the process CPU (every node's threads,
the event loop and the PostgreSQL client; the server's not counted), the leader's and a
follower's detection-thread CPU per text it handled, and the bytes committed to
`drift_samples` (float16 embeddings and the table's size with its index).

    .venv/bin/python bench/cluster_drift.py                  # 12,000 texts
    .venv/bin/python bench/cluster_drift.py --texts 6000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinc import load
from cluster import database  # a fresh database of the round's own

from lookout.clock import SystemClock
from lookout.detectors.embedders import Embedder
from lookout.monitor.cluster.leadership import Leadership, Role
from lookout.monitor.config import DetectorsConfig
from lookout.monitor.detection.embedding import build_embedder
from lookout.monitor.detection.service import DetectionService
from lookout.monitor.detection.shared_drift import ClusterDetection
from lookout.monitor.ingest.records import Record
from lookout.monitor.storage.pg_leases import PgRoleLock
from lookout.monitor.storage.pg_references import PgReferenceStore
from lookout.monitor.storage.schema import migrate_postgres

REFERENCE = 1000
CFG = DetectorsConfig.model_validate(
    {
        "max_cpu_share": 64,  # every text admitted: this measures the work, not the budget
        "max_texts_per_s": 1e9,
        "fields": ["prompt"],
        "reference": {"auto_size": REFERENCE},
        "drift": {"window": 200, "ert": 1000},
    }
)


class Node:
    def __init__(self, service: DetectionService, registry: CollectorRegistry) -> None:
        self.service, self.registry = service, registry

    def offer(self, texts: list[str]) -> None:
        now = time.time()
        for t in texts:
            record = Record(
                id=None, ts=now, app="bot", model="m", status="ok", received_at=now, prompt=t
            )
            self.service.offer(record, now)

    def counter(self, name: str) -> float:
        return self.registry.get_sample_value(name) or 0.0

    async def thread_cpu_s(self) -> float:
        return float(await self.service._thread.call(time.thread_time))


@contextlib.asynccontextmanager
async def node(url: str, name: str, embedder: Embedder, clustered: bool) -> AsyncIterator[Node]:
    registry = CollectorRegistry()
    async with contextlib.AsyncExitStack() as stack:
        lead = Leadership(None)  # one node alone: the detectors share nothing
        if clustered:
            locks: dict[Role, Any] = {
                r: PgRoleLock(url, r.value, node=name, connect_timeout_s=5) for r in Role
            }
            lead = await stack.enter_async_context(Leadership(locks, retry_interval_s=0.1))
            if name == "n0":  # the first node takes every role
                await asyncio.wait_for(lead.gate(Role.ALERTS).wait_held(), 5)
        fence = lead.gate(Role.REFERENCES).fenced if clustered else None
        refs = await stack.enter_async_context(PgReferenceStore(url, node=name, fence=fence))
        cluster = ClusterDetection(
            node=name,
            samples=refs.samples,
            drift=lead.gate(Role.ALERTS),
            references=lead.gate(Role.REFERENCES),
            flush_interval_s=0.05,
            read_interval_s=0.05,
        )
        service = DetectionService(
            CFG,
            embedder=embedder,
            references=refs,
            clock=SystemClock(),
            registry=registry,
            poll_interval_s=0.05,
            cluster=cluster if clustered else None,
        )
        yield Node(await stack.enter_async_context(service), registry)


async def until(check: Callable[[], bool], timeout_s: float = 120.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


def reference_of(n: Node) -> int | None:
    entries = n.service.status(60, time.time())
    return entries[0]["reference_id"] if entries else None


def has_reference(n: Node, ref: int | None) -> bool:
    return reference_of(n) == ref


def has_read(leader: Node, texts: int) -> bool:
    return leader.counter("lookout_drift_samples_read_total") >= texts


async def round_(
    n_nodes: int, clustered: bool, texts: list[str], embedder: Embedder
) -> dict[str, float]:
    with database() as url:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await migrate_postgres(conn)
        async with contextlib.AsyncExitStack() as stack:
            nodes = [
                await stack.enter_async_context(node(url, f"n{i}", embedder, clustered))
                for i in range(n_nodes)
            ]
            leader, others = nodes[0], nodes[1:]
            leader.offer(texts[:REFERENCE])
            await leader.service.wait_idle()
            ref = reference_of(leader)
            for other in others:
                await until(functools.partial(has_reference, other, ref))
            stream = texts[REFERENCE:]
            cpu0, thread0 = time.process_time(), [await n.thread_cpu_s() for n in nodes]
            for start in range(0, len(stream), 600):
                chunk = stream[start : start + 600]
                for i, n in enumerate(nodes):
                    n.offer(chunk[i::n_nodes])
                for n in nodes:
                    await n.service.wait_idle()
                if others:
                    given = sum(len(stream[: start + 600][i::n_nodes]) for i in range(1, n_nodes))
                    await until(functools.partial(has_read, leader, given))
            cpu = time.process_time() - cpu0
            threads = [await n.thread_cpu_s() - t for n, t in zip(nodes, thread0, strict=True)]
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT COALESCE(SUM(n), 0), COALESCE(SUM(octet_length(embeddings)), 0),"
                " COUNT(*), pg_total_relation_size('drift_samples') FROM drift_samples"
            ).fetchone()
    assert row is not None
    shared, payload, rows, table = (float(v) for v in row)
    total = len(stream)
    per_node = total / n_nodes
    return {
        "nodes": n_nodes,
        "cluster": float(clustered),
        "texts": total,
        "cpu_us_per_text": 1e6 * cpu / total,
        "leader_thread_us_per_text": 1e6 * threads[0] / per_node,
        "follower_thread_us_per_text": 1e6 * threads[1] / per_node if n_nodes > 1 else 0.0,
        "shared_texts": shared,
        "payload_bytes_per_text": payload / shared if shared else 0.0,
        "table_bytes_per_text": table / shared if shared else 0.0,
        "rows": rows,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--texts", type=int, default=12_000)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of each setting")
    args = parser.parse_args()
    texts = list(dict.fromkeys(u.text for u in load()))[: REFERENCE + args.texts]
    embedder = build_embedder(CFG.embedder)
    await round_(1, False, texts[: REFERENCE + 600], embedder)  # warm-up, not shown
    for _ in range(args.repeat):
        for n, clustered in ((1, False), (1, True), (3, True)):
            print(json.dumps(await round_(n, clustered, texts, embedder)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
