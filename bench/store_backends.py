"""The main store's write path on SQLite and on PostgreSQL: records committed per second and CPU.

Each round puts N sampled records (~1.2 KB) through the store as ingest does (`put_record`,
then the group commit, with its back-pressure), in batches of 50 each awaiting nothing but
room, and ends when everything is committed. It reports records/s (wall time), lookout's own CPU
per 1,000 records, and for PostgreSQL the server's CPU per 1,000 records (every `postgres`
process, so the box must be otherwise quiet for that figure to mean much). Rounds alternate
between the backends in one run; the best of each is shown. PostgreSQL on 127.0.0.1:5432 (trust
auth, user postgres): a fresh database per round, dropped after.

    .venv/bin/python bench/store_backends.py               # 50,000 records, 3 rounds
    .venv/bin/python bench/store_backends.py --records 10000 --rounds 1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.monitor.config import StoreConfig
from lookout.monitor.ingest.records import DecodeLimits, Record, decode_payload
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage import open_store

TEXT = "Where is my order? I ordered a pair of running shoes last Tuesday " * 8


@dataclass
class Round:
    backend: str
    records_s: float
    cpu_ms_per_1k: float
    server_cpu_ms_per_1k: float | None


def records(n: int) -> list[Record]:
    out = []
    for i in range(n):
        payload = (
            f'{{"id": "r{i}", "app": "bench", "model": "gpt-4o-mini", "latency_ms": 812,'
            f' "input_tokens": 150, "output_tokens": 80, "prompt": "{TEXT}",'
            f' "response": "{TEXT}", "metadata": {{"tenant": "acme"}}}}'
        ).encode()
        out.extend(decode_payload(payload, None, time.time(), DecodeLimits()).records)
    return out


def postgres_cpu_s() -> float:
    """CPU seconds used so far by every process named postgres (from /proc)."""
    ticks = 0
    for proc in Path("/proc").glob("[0-9]*"):
        with suppress(OSError):
            if (proc / "comm").read_text().strip() == "postgres":
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
                ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@contextmanager
def store_url(backend: str) -> Iterator[str]:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            yield f"sqlite:///{tmp}/bench.db"
        return
    name, admin = (
        f"lookout_bench_{uuid.uuid4().hex[:8]}",
        "postgresql://postgres@127.0.0.1/postgres",
    )
    with psycopg.connect(admin, autocommit=True) as db:
        db.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as db:
            db.execute(f"DROP DATABASE {name} WITH (FORCE)")


async def one_round(backend: str, batch: list[Record]) -> Round:
    with store_url(backend) as url:
        store = open_store(StoreConfig(url=url), IngestMetrics(CollectorRegistry()), SystemClock())
        async with store:
            server0, cpu0, t0 = postgres_cpu_s(), time.process_time(), time.perf_counter()
            for start in range(0, len(batch), 50):
                await store.wait_room()
                for record in batch[start : start + 50]:
                    store.put_record(record, 0.0001)
            await store.flush()
            wall = time.perf_counter() - t0
            cpu, server = time.process_time() - cpu0, postgres_cpu_s() - server0
            stored = await store.count_records()
            assert stored == len(batch), (backend, stored)
    per_1k = 1000 / len(batch)
    return Round(
        backend,
        len(batch) / wall,
        cpu * 1000 * per_1k,
        server * 1000 * per_1k if backend == "postgres" else None,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    batch = records(args.records)
    best: dict[str, Round] = {}
    for _ in range(args.rounds):
        for backend in ("sqlite", "postgres"):
            r = asyncio.run(one_round(backend, batch))
            if backend not in best or r.records_s > best[backend].records_s:
                best[backend] = r
    print(f"{args.records:,} records of ~1.2 KB, best of {args.rounds} round(s) each")
    print(f"{'store':<10} {'records/s':>10} {'lookout CPU ms/1k':>18} {'server CPU ms/1k':>17}")
    for r in best.values():
        server = f"{r.server_cpu_ms_per_1k:17.1f}" if r.server_cpu_ms_per_1k is not None else "-"
        print(f"{r.backend:<10} {r.records_s:10,.0f} {r.cpu_ms_per_1k:18.1f} {server:>17}")


if __name__ == "__main__":
    main()
