"""The judge's sampling query on SQLite and on PostgreSQL: how long one run's pick takes.

N records (five apps, a response each, 1% OOD-flagged, 1% with negative feedback) are written
through the store as ingest does; a tenth of them already have a verdict. Then the judge's
store picks `sample_size` records per app (unjudged first, disliked and OOD-flagged first, the
seeded sample key) a few times; the median wall time per pick is shown. PostgreSQL on
127.0.0.1:5432 (trust auth, user postgres): a fresh database, dropped after.

    .venv/bin/python bench/judge_sampling.py               # 50,000 records
    .venv/bin/python bench/judge_sampling.py --records 10000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

from prometheus_client import CollectorRegistry
from store_backends import store_url  # a fresh database on 127.0.0.1, dropped after

from lookout.clock import FakeClock
from lookout.monitor.config import StoreConfig
from lookout.monitor.ingest.feedback import Feedback
from lookout.monitor.ingest.records import Record
from lookout.monitor.judge.store import JudgeStore, RunTotals, SampleQuery, StoredVerdict
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage import Store
from lookout.monitor.storage.pg_judge import PgJudgeStore
from lookout.monitor.storage.postgres import PostgresStore
from lookout.monitor.storage.sqlite import SqliteStore
from lookout.monitor.storage.sqlite_judge import SqliteJudgeStore

NOW = 1_800_000_000.0
APPS = ("shop", "support", "search", "legal", "docs")


@contextlib.asynccontextmanager
async def stores(backend: str, folder: Path) -> AsyncIterator[tuple[Store, JudgeStore]]:
    metrics, clock = IngestMetrics(CollectorRegistry()), FakeClock(NOW)
    if backend == "sqlite":
        path = folder / "lookout.db"
        async with (
            SqliteStore(StoreConfig(url=f"sqlite:///{path}"), metrics, clock) as store,
            SqliteJudgeStore(path) as book,
        ):
            yield store, book
        return
    with store_url("postgres") as url:
        async with PostgresStore(StoreConfig(url=url), metrics, clock, node="bench") as pg:
            yield pg, PgJudgeStore(pg.connection, node="bench")


async def fill(store: Store, book: JudgeStore, n: int) -> None:
    flags = json.dumps({"ood": {"prompt": {"score": 0.9, "flagged": True}}})
    for i in range(n):
        app = APPS[i % len(APPS)]
        rid = f"r{i}"
        store.put_record(
            Record(
                id=rid,
                ts=NOW - 60,
                app=app,
                model="m",
                status="ok",
                received_at=NOW - 60,
                prompt=f"question {i}?",
                response=f"answer {i}.",
            ),
            0.0,
        )
        if i % 100 == 7:
            store.put_scores([(app, rid, 0.9, flags)])
        if i % 100 == 13:
            store.feedback.put(Feedback(app, rid, "thumbs", "u", 0.0, NOW, NOW), True)
        if i % 1000 == 999:
            await store.flush()
    await store.flush()
    run_id = await book.start_run(NOW, "bench", None)
    assert run_id is not None
    verdicts = [
        StoredVerdict(f"r{i}", "helpfulness", APPS[i % 5], "m", run_id, NOW, True, 1.0, "", "j")
        for i in range(0, n, 10)
    ]
    for start in range(0, len(verdicts), 500):
        await book.record(run_id, verdicts[start : start + 500], RunTotals())


async def pick_ms(book: JudgeStore, rounds: int) -> float:
    query = SampleQuery(
        since=NOW - 3600, per_app=20, seed="bench", ood_first=True, feedback_first=True
    )
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        picked = await book.candidates(query)
        times.append((time.perf_counter() - started) * 1000)
        assert len(picked) == 20 * len(APPS)
    return statistics.median(times)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for backend in ("sqlite", "postgres"):
        with tempfile.TemporaryDirectory() as folder:
            async with stores(backend, Path(folder)) as (store, book):
                await fill(store, book, args.records)
                ms = await pick_ms(book, args.rounds)
        print(f"{backend:9} {args.records:>8,} records  pick of 20 x 5 apps: {ms:8.1f} ms")


if __name__ == "__main__":
    asyncio.run(main())
