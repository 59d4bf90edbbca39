"""What one commit group costs lookout on PostgreSQL, by group size: CPU ms per group.

A node commits a group every `store.flush_interval_s` (or sooner, at half the MQTT in-flight
window): at a modest rate every group is small, and in a cluster each node's groups are a
third the size of one node's at the same total rate. So the fixed cost of a group, not the
cost per row, decides what a node costs at a steady rate and how CPU per record grows with the
node count (bench/cluster.py). Each round builds groups as ingest does (three apps, 1% of the
records sampled as ~300-byte rows, every record's id, the group's per-minute partials with
t-digests of its latencies, TTFTs and generation rates) and commits them through the real
`PostgresStore`, timing lookout's process CPU over `--groups` commits (the server's is not
counted). PostgreSQL on 127.0.0.1:5432, a fresh database per round.

    .venv/bin/python bench/pg_commit.py                    # 400 groups of 10, 100, 1,000 records
    .venv/bin/python bench/pg_commit.py --groups 200 --sizes 640
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time

from cluster import database
from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.monitor.config import StoreConfig
from lookout.monitor.ingest.records import DecodeLimits, Record, decode_payload
from lookout.monitor.metrics.partials import Partial, partial_rows
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage import open_store
from lookout.monitor.storage.postgres import PostgresStore

APPS = ("shop", "support", "search")


def sampled(n: int, start: int) -> list[Record]:
    out = []
    for i in range(start, start + n):
        payload = (
            f'{{"id": "s{i}", "app": "{APPS[i % 3]}", "model": "gpt-4o-mini",'
            f' "latency_ms": 812, "input_tokens": 150, "output_tokens": 80,'
            f' "prompt": "Where is my order? I ordered shoes last Tuesday", "response": "Soon."}}'
        ).encode()
        out.extend(decode_payload(payload, None, time.time(), DecodeLimits()).records)
    return out


def fill(store: PostgresStore, size: int, seq: int, rng: random.Random) -> None:
    """One group as the pipeline hands it over: sampled rows, ids, partials."""
    minute = int(time.time()) // 60 * 60
    parts = []
    for app in APPS:
        p = Partial()
        k = size // len(APPS)
        p.count = k
        p.token_records = k
        p.tokens = 230 * k
        p.output_tokens = 80 * k
        p.cost = 0.0001 * k
        p.latency_s += [rng.lognormvariate(-0.5, 0.5) for _ in range(k)]
        p.ttft_s += [rng.lognormvariate(-2.0, 0.5) for _ in range(k)]
        p.gen_tps += [rng.lognormvariate(4.0, 0.3) for _ in range(k)]
        parts.append((app, "gpt-4o-mini", minute, p))
    store.put_partials(partial_rows(parts))
    store.put_seen_ids([(APPS[i % 3], f"r{seq}-{i}") for i in range(size)])
    for record in sampled(max(1, size // 100), seq * size):
        store.put_record(record, 0.0001)


async def one_round(url: str, size: int, groups: int) -> float:
    """CPU ms per committed group of `size` records."""
    metrics = IngestMetrics(CollectorRegistry())
    cfg = StoreConfig(url=url)
    rng = random.Random(size)
    async with open_store(cfg, metrics, SystemClock(), node="bench") as store:
        assert isinstance(store, PostgresStore)
        for seq in range(20):  # warm-up: connections, prepared statements, the minute's rows
            fill(store, size, seq, rng)
            await store.flush()
        cpu = 0.0
        for seq in range(20, 20 + groups):
            fill(store, size, seq, rng)  # the pipeline's share, not timed
            started = time.process_time()
            await store.flush()
            cpu += time.process_time() - started
    return cpu / groups * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--groups", type=int, default=400)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 1000])
    args = parser.parse_args()
    print(f"{args.groups} groups per size; lookout's CPU per commit on PostgreSQL")
    print("records per group  CPU ms per group  CPU us per record")
    for size in args.sizes:
        with database() as url:
            ms = asyncio.run(one_round(url, size, args.groups))
        print(f"{size:17d}  {ms:16.2f}  {ms / size * 1e3:17.1f}")


if __name__ == "__main__":
    main()
