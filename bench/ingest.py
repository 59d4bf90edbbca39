"""Ingest throughput: lookout's whole pipeline against a bare aiomqtt subscriber that only counts.

One private Mosquitto (no queue limit, so nothing is dropped), one C publisher
(`mosquitto_pub -l`, ~6 us a message) flooding ~1 KB records, and each subscriber in its own
process, one after the other, on the same broker in the same run. A subscriber's rate is
messages (or records) over the time from its first to its last; CPU time per record is the
steadier figure on a shared box. Then lookout alone ingests 1M records in batches of 50 and
reports its RSS after 100k and after 1M.

    .venv/bin/python bench/ingest.py            # full run (about two minutes)
    .venv/bin/python bench/ingest.py --quick    # smaller counts, for a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

BATCH = 50
TOPIC = "llm/records/bench"


def record(i: int) -> dict[str, Any]:
    return {
        "ts": 1732800000.0 + i * 0.001,
        "model": "gpt-4o-mini",
        "provider": "openai",
        "prompt": "Where is my order? I ordered a pair of running shoes last Tuesday " * 5,
        "response": "Your order shipped yesterday and should arrive within three days. " * 5,
        "latency_ms": 400 + i % 900,
        "ttft_ms": 120 + i % 60,
        "input_tokens": 150,
        "output_tokens": 80 + i % 40,
        "user_id": f"u-{i % 1000}",
        "metadata": {"tenant": "acme"},
    }


def write_payloads(path: Path, messages: int, batch: int) -> None:
    with path.open("w") as f:
        for m in range(messages):
            if batch == 1:
                f.write(json.dumps(record(m)) + "\n")
            else:
                f.write(json.dumps([record(m * batch + j) for j in range(batch)]) + "\n")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# --- subscriber roles (run in a child process) -------------------------------------------


async def bare(port: int, qos: int, expect: int) -> dict[str, Any]:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=f"bare-{uuid.uuid4().hex[:6]}") as c:
        await c.subscribe(TOPIC, qos=qos)
        print("READY", flush=True)
        count = 0
        t0 = c0 = 0.0
        async for _message in c.messages:
            count += 1
            if count == 1:
                t0, c0 = time.perf_counter(), cpu_s()
            if count == expect:
                break
        return {"elapsed_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0, "rss_mb": rss_mb()}


async def lookout(port: int, qos: int, expect: int, batch: int) -> dict[str, Any]:
    from lookout.monitor.config import Settings
    from lookout.monitor.daemon import Daemon
    from lookout.monitor.logs import configure_logging

    configure_logging("warning")

    tmp = tempfile.mkdtemp(prefix="lookout-bench-")
    settings = Settings.model_validate(
        {
            "bus": {
                "url": f"mqtt://127.0.0.1:{port}",
                "topics": [TOPIC],
                "qos": qos,
                "client_id": f"lookout-{uuid.uuid4().hex[:6]}",
                "persistent_session": False,
            },
            "store": {"url": f"sqlite:///{tmp}/bench.db"},
            "api": {"bind": "127.0.0.1:0"},
        }
    )
    daemon = Daemon(settings)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    await asyncio.wait_for(daemon.source.connected.wait(), 20)
    print("READY", flush=True)
    queue = daemon.queue
    marks: dict[str, float] = {}
    while queue.processed == 0:
        await queue.wait_progress()
    t0, c0 = time.perf_counter(), cpu_s()
    first = queue.processed
    while queue.processed < expect:
        await queue.wait_progress()
        if "rss_100k_mb" not in marks and queue.processed * batch >= 100_000:
            marks["rss_100k_mb"] = rss_mb()
    elapsed, cpu = time.perf_counter() - t0, cpu_s() - c0
    result = {"elapsed_s": elapsed, "cpu_s": cpu, "rss_mb": rss_mb(), "skipped": first, **marks}
    stop.set()
    await runner
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def child(args: argparse.Namespace) -> None:
    if os.environ.get("BENCH_PROFILE") == args.role:
        import cProfile

        cProfile.runctx(
            "_child(args)",
            globals(),
            {"args": args},
            f"{tempfile.gettempdir()}/bench-{args.role}.prof",
        )
    else:
        _child(args)


def _child(args: argparse.Namespace) -> None:
    if args.role == "bare":
        result = asyncio.run(bare(args.port, args.qos, args.expect))
    else:
        result = asyncio.run(lookout(args.port, args.qos, args.expect, args.batch))
    print("RESULT " + json.dumps(result), flush=True)


# --- orchestration -----------------------------------------------------------------------


class Broker:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 0\nmax_inflight_messages 100\n"
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_one(  # noqa: PLR0917
    broker: Broker, role: str, qos: int, payloads: Path, messages: int, batch: int
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--role", role, "--port", str(broker.port), "--qos", str(qos),
           "--expect", str(messages), "--batch", str(batch)]  # fmt: skip
    sub = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ})
    assert sub.stdout is not None
    for line in sub.stdout:
        if line.startswith("READY"):
            break
    else:
        raise RuntimeError(f"{role} subscriber exited before subscribing")
    with payloads.open("rb") as f:
        subprocess.run(
            ["mosquitto_pub", "-p", str(broker.port), "-t", TOPIC, "-q", str(qos), "-l"],
            stdin=f, check=True,
        )  # fmt: skip
    out, _ = sub.communicate(timeout=600)
    result_line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result: dict[str, Any] = json.loads(result_line[7:])
    counted = messages - result.get("skipped", 1)
    result["msg_per_s"] = counted / result["elapsed_s"]
    result["records_per_s"] = result["msg_per_s"] * batch
    result["cpu_us_per_record"] = result["cpu_s"] / (counted * batch) * 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["bare", "lookout"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--expect", type=int)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.role:
        child(args)
        return

    singles = 20_000 if args.quick else 100_000
    batches = 1_000 if args.quick else 6_000
    rss_records = 200_000 if args.quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="lookout-bench-") as tmp:
        work = Path(tmp)
        single_file, batch_file, rss_file = (
            work / "single.jsonl",
            work / "batch.jsonl",
            work / "rss.jsonl",
        )
        write_payloads(single_file, singles, 1)
        write_payloads(batch_file, batches, BATCH)
        write_payloads(rss_file, rss_records // BATCH, BATCH)
        broker = Broker(work)
        try:
            rows = []
            for label, path, messages, batch in (
                ("single records", single_file, singles, 1),
                (f"batches of {BATCH}", batch_file, batches, BATCH),
            ):
                for qos in (0, 1):
                    base = run_one(broker, "bare", qos, path, messages, batch)
                    ours = run_one(broker, "lookout", qos, path, messages, batch)
                    rows.append((label, qos, base, ours))
            rss = run_one(broker, "lookout", 0, rss_file, rss_records // BATCH, BATCH)
        finally:
            broker.close()

    print(f"\n{'messages':18s} {'QoS':>3s} {'bare aiomqtt':>14s} {'lookout':>14s} {'ratio':>6s}"
          f" {'lookout rec/s':>14s} {'CPU us/rec':>10s}")  # fmt: skip
    for label, qos, base, ours in rows:
        print(f"{label:18s} {qos:3d} {base['msg_per_s']:10,.0f} m/s {ours['msg_per_s']:10,.0f} m/s"
              f" {ours['msg_per_s'] / base['msg_per_s']:5.2f}x {ours['records_per_s']:14,.0f}"
              f" {ours['cpu_us_per_record']:10.2f}")  # fmt: skip
    print(
        f"\nRSS after 100k records: {rss['rss_100k_mb']:.1f} MB; after {rss_records:,}: "
        f"{rss['rss_mb']:.1f} MB (growth {rss['rss_mb'] - rss['rss_100k_mb']:+.1f} MB); "
        f"{rss['records_per_s']:,.0f} records/s"
    )


if __name__ == "__main__":
    main()
