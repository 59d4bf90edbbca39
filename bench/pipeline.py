"""CPU per record of the in-process ingest path, without a broker.

The same ~1.1 KB records as bench/ingest.py go through `Pipeline.process_payload` (decode,
validate, de-duplicate, windows and the commit group's partials, Prometheus totals, 10% sampled
into SQLite, committed every 50 ms by the store's thread) in one process: what lookout itself
costs per record, apart from MQTT. Process CPU time includes the store's thread. Feedback
routing, engagement and tool use are built as the daemon builds them.

    .venv/bin/python bench/pipeline.py             # 20,000 single records; 100,000 in batches
    .venv/bin/python bench/pipeline.py --rounds 5  # best and median of 5 rounds each
    .venv/bin/python bench/pipeline.py --ab        # without / with user, session, tools and
                                                   # retrieval, rounds alternated (issue 18)
    LOOKOUT_BENCH_EXTRAS=0 .venv/bin/python bench/pipeline.py ...  # engagement, tool series off
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time

from ingest import BATCH, TOPIC, record  # the records bench/ingest.py publishes
from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.monitor.builders import build_pipeline, build_usage, build_windows
from lookout.monitor.config import Settings
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage.sqlite import SqliteStore

USAGE_FIELDS = ("user_id", "session_id", "tools", "retrieval")


def record_without_usage(i: int) -> dict[str, object]:
    """bench/ingest.py's record `i` as records were before issue 18's usage fields."""
    out = record(i)
    for field in USAGE_FIELDS:
        del out[field]
    return out


def payloads(records: int, batch: int, *, usage: bool = True) -> list[bytes]:
    """`usage`: with the engagement and tool-use fields (issue 18), else without them."""

    def one(i: int) -> dict[str, object]:
        return (record(i) if usage else record_without_usage(i)) | {"id": f"r{i}"}

    if batch == 1:
        return [json.dumps(one(i)).encode() for i in range(records)]
    return [
        json.dumps([one(i * batch + j) for j in range(batch)]).encode()
        for i in range(records // batch)
    ]


async def cpu_us_per_record(messages: list[bytes], records: int) -> float:
    with tempfile.TemporaryDirectory(prefix="lookout-bench-") as tmp:
        settings = Settings.model_validate(
            {
                "store": {"url": f"sqlite:///{tmp}/bench.db", "record_sample_rate": 0.1},
                "detectors": {"enabled": False},
                **{
                    section: {"enabled": os.environ.get("LOOKOUT_BENCH_EXTRAS", "1") == "1"}
                    for section in ("engagement", "tools")
                },
            }
        )
        registry = CollectorRegistry()
        prom = IngestMetrics(registry)
        store = SqliteStore(settings.store, prom, SystemClock())
        windows = build_windows(settings, time.time())
        pipeline = build_pipeline(settings, windows, prom, store)
        build_usage(settings, pipeline, windows, store, registry, time.time)
        async with store:
            started = time.process_time()
            for n, payload in enumerate(messages):
                pipeline.process_payload(payload, TOPIC, "mqtt", time.time())
                if n % 200 == 0:
                    await asyncio.sleep(0)  # let the store's committer run, as the daemon does
            await store.flush()
            return (time.process_time() - started) / records * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ab", action="store_true", help="without / with the usage fields")
    args = parser.parse_args()
    for label, records, batch in (
        ("single records", 20_000, 1),
        (f"batches of {BATCH}", 100_000, BATCH),
    ):
        if not args.ab:
            messages = payloads(records, batch)
            figures = [
                asyncio.run(cpu_us_per_record(messages, records)) for _ in range(args.rounds)
            ]
            print(
                f"{label:16s} CPU us/record: best {min(figures):.2f}, "
                f"median {statistics.median(figures):.2f} ({args.rounds} rounds)"
            )
            continue
        # Alternated round by round, so the box's load falls on both alike.
        bare, filled = payloads(records, batch, usage=False), payloads(records, batch)
        off: list[float] = []
        on: list[float] = []
        for _ in range(args.rounds):
            off.append(asyncio.run(cpu_us_per_record(bare, records)))
            on.append(asyncio.run(cpu_us_per_record(filled, records)))
        ratios = sorted(b / a for a, b in zip(off, on, strict=True))
        print(
            f"{label:16s} CPU us/record without fields: best {min(off):.2f}, median "
            f"{statistics.median(off):.2f}; with: best {min(on):.2f}, median "
            f"{statistics.median(on):.2f}; with/without per pair: median "
            f"{statistics.median(ratios):.3f} ({', '.join(f'{r:.3f}' for r in ratios)})"
        )


if __name__ == "__main__":
    main()
