"""The alert outbox on PostgreSQL against SQLite: one evaluation's commit (10 notifications,
fenced on the alert role's session) and delivery throughput with a backlog (two nodes' workers
claiming with leases on PostgreSQL, one worker on SQLite), with a receiver that answers at once.

    .venv/bin/python bench/outbox_pg.py [--rows 2000]

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust); makes and drops its own database.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry, Counter

from lookout.alerts.delivery import ChannelDelivery
from lookout.alerts.outbox import Outbox, OutboxEntry
from lookout.alerts.payload import Outcome
from lookout.clock import SystemClock
from lookout.monitor.cluster.leadership import Role
from lookout.monitor.config import Settings
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage.pg_leases import PgRoleLock
from lookout.monitor.storage.postgres import PostgresStore
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox

ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class Receiver:
    merge_limit = 1

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def send(self, payload: dict[str, Any], idempotency_key: str, now: float) -> Outcome:
        self.keys.append(idempotency_key)
        return Outcome(True)


async def _nothing(_: float) -> None:
    return None


def entries(start: int) -> list[OutboxEntry]:
    return [
        OutboxEntry("hook", f"k{i}", {"n": i}, f"line{i % 50}") for i in range(start, start + 10)
    ]


async def commit_ms(outbox: Outbox, rows: int) -> float:
    began = time.perf_counter()
    for start in range(0, rows, 10):
        await outbox.commit([], entries(start), time.time())
    return (time.perf_counter() - began) / (rows / 10) * 1000


async def deliver(outboxes: list[Outbox], rows: int) -> tuple[float, list[int]]:
    """Rows per second through every worker; each row once (checked) and each worker's share."""
    sent = Counter("sent", "sends", ["channel", "outcome"], registry=CollectorRegistry())
    receivers = [Receiver() for _ in outboxes]
    workers = [
        ChannelDelivery("hook", r, outbox=o, clock=SystemClock(), counter=sent, after_pass=_nothing)
        for r, o in zip(receivers, outboxes, strict=True)
    ]
    began = time.perf_counter()
    while sum(len(r.keys) for r in receivers) < rows:
        await asyncio.gather(*(w.deliver_due(time.time()) for w in workers))
    elapsed = time.perf_counter() - began
    keys = [k for r in receivers for k in r.keys]
    assert len(keys) == len(set(keys)) == rows, "a row was sent twice"
    return rows / elapsed, [len(r.keys) for r in receivers]


def pg_store(url: str, node: str) -> PostgresStore:
    cfg = Settings.model_validate({"store": {"url": url}}).store
    return PostgresStore(cfg, IngestMetrics(CollectorRegistry()), SystemClock(), node=node)


async def postgres(rows: int) -> None:
    name = f"lookout_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        lock = PgRoleLock(url, Role.ALERTS.value, node="a", connect_timeout_s=5.0)
        async with pg_store(url, "a") as a, pg_store(url, "b") as b:
            assert await lock.try_acquire()
            ms = await commit_ms(a.outbox(fenced=lock.fenced), rows)
            print(f"postgres: one evaluation's commit of 10 notifications: {ms:.2f} ms")
            rate, split = await deliver([a.outbox(), b.outbox()], rows)
            print(f"postgres: two nodes deliver {rows} rows: {rate:.0f} rows/s, split {split}")
            await lock.release()
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


async def sqlite(rows: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with SqliteOutbox(Path(folder) / "lookout.db") as outbox:
            ms = await commit_ms(outbox, rows)
            print(f"sqlite:   one evaluation's commit of 10 notifications: {ms:.2f} ms")
            rate, _ = await deliver([outbox], rows)
            print(f"sqlite:   one node delivers {rows} rows: {rate:.0f} rows/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2000)
    rows = parser.parse_args().rows
    asyncio.run(postgres(rows))
    asyncio.run(sqlite(rows))


if __name__ == "__main__":
    main()
