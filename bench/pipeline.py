"""CPU per record of the in-process ingest path, without a broker.

The same ~1.1 KB records as bench/ingest.py go through `Pipeline.process_payload` (decode,
validate, de-duplicate, windows and the commit group's partials, Prometheus totals, 10% sampled
into SQLite, committed every 50 ms by the store's thread) in one process: what lookout itself
costs per record, apart from MQTT. Process CPU time includes the store's thread.

    .venv/bin/python bench/pipeline.py             # 20,000 single records; 100,000 in batches
    .venv/bin/python bench/pipeline.py --rounds 5  # best and median of 5 rounds each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time

from ingest import BATCH, TOPIC, record  # the records bench/ingest.py publishes
from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.monitor.builders import build_pipeline, build_windows
from lookout.monitor.config import Settings
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage.sqlite import SqliteStore


def payloads(records: int, batch: int) -> list[bytes]:
    def one(i: int) -> dict[str, object]:
        return record(i) | {"id": f"r{i}"}

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
            }
        )
        prom = IngestMetrics(CollectorRegistry())
        store = SqliteStore(settings.store, prom, SystemClock())
        pipeline = build_pipeline(settings, build_windows(settings, time.time()), prom, store)
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
    args = parser.parse_args()
    for label, records, batch in (
        ("single records", 20_000, 1),
        (f"batches of {BATCH}", 100_000, BATCH),
    ):
        messages = payloads(records, batch)
        figures = [asyncio.run(cpu_us_per_record(messages, records)) for _ in range(args.rounds)]
        print(
            f"{label:16s} CPU us/record: best {min(figures):.2f}, "
            f"median {statistics.median(figures):.2f} ({args.rounds} rounds)"
        )


if __name__ == "__main__":
    main()
