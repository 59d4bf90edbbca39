"""Ingest throughput: lookout's whole pipeline against a bare aiomqtt subscriber that only counts.

Method (a backlog drain, so the publisher never competes with the subscriber for the 2 cores):
each subscriber, in its own process, opens a persistent session on a private Mosquitto (no queue
limit, QoS 0 messages queued too) and disconnects; C publishers (`mosquitto_pub`, four in
parallel, at QoS 1 so they finish only once the broker holds everything) then put N messages of
~1 KB records in the broker's queue for it (each record with its own prompt and response, so the
embedder works as it would on real traffic: bench/ingest_payloads.py); the subscriber reconnects
and drains them as fast as it can, at its subscription's QoS. Its rate is messages (records)
over the time from its first to its last; CPU time per record is the steadier figure on a
shared box. The two subscribers alternate on the same broker in the same run, best of
`--rounds` each. Last, lookout alone drains 1M records in batches of 50 and reports its RSS
after 100k and after 1M. The detectors' figures for each lookout round (effective sample
rate, texts embedded a second, embedding cache hit rate) come from the daemon's metrics:
bench/ingest_detection.py.

    .venv/bin/python bench/ingest.py            # full run (a few minutes)
    .venv/bin/python bench/ingest.py --quick    # smaller counts, one round
    .venv/bin/python bench/ingest.py --quick --embedder \
        '{"kind": "sentence-transformers", "model": "all-MiniLM-L6-v2"}'   # the extra's model
    .venv/bin/python bench/ingest.py --rss-only # only the RSS growth from 100k to 1M records
    .venv/bin/python bench/ingest.py --live     # publishers and subscriber at the same time
    .venv/bin/python bench/ingest.py --payload repeated   # one record repeated (the old method)
    LOOKOUT_BENCH_DETECTORS='{"max_texts_per_s": 100}' .venv/bin/python bench/ingest.py ...
    LOOKOUT_BENCH_MQTT=3.1.1 .venv/bin/python bench/ingest.py ...   # lookout on MQTT 3.1.1
    LOOKOUT_BENCH_EXTRAS=0 .venv/bin/python bench/ingest.py ...  # engagement, tool series off

Live mode (`--live`): the broker keeps Mosquitto's stock in-flight limit (max_inflight_messages
20; lookout raises its own window with MQTT 5's Receive Maximum) and only queues without limit
so nothing is dropped; the subscriber connects first and the C publishers then publish while it
consumes, so both compete for the two cores as in production. lookout acknowledges each
message after its commit group is committed (the crash-safe path).
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

from ingest_detection import DetectionWatch, describe
from ingest_payloads import Payload, payload_bytes, publish, write_payload

BATCH = 50
TOPIC = "llm/records/bench"
PUBLISHERS = 4


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
        "session_id": f"s-{i % 5000}",
        "tools": [{"name": "order_lookup", "latency_ms": 40 + i % 20, "status": "ok"}],
        "retrieval": {"latency_ms": 12 + i % 7, "documents": i % 4},
        "metadata": {"tenant": "acme"},
    }


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


# --- subscriber roles (each in a child process) ------------------------------------------


def wait_for_go() -> None:
    print("PARKED", flush=True)
    if sys.stdin.readline().strip() != "GO":
        raise SystemExit("orchestrator went away")


async def bare(port: int, qos: int, expect: int, client_id: str) -> dict[str, Any]:
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=False) as c:
        await c.subscribe(TOPIC, qos=qos)
    await asyncio.to_thread(wait_for_go)
    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=False) as c:
        count = 0
        t0 = c0 = 0.0
        async for _message in c.messages:
            count += 1
            if count == 1:
                t0, c0 = time.perf_counter(), cpu_s()
            if count == expect:
                break
        return {"elapsed_s": time.perf_counter() - t0, "cpu_s": cpu_s() - c0, "first": 1}


async def lookout(  # noqa: PLR0917
    port: int, qos: int, expect: int, batch: int, client_id: str, embedder: str | None
) -> dict[str, Any]:
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
                "client_id": client_id,
                "protocol": os.environ.get("LOOKOUT_BENCH_MQTT", "5"),
            },
            "store": {"url": f"sqlite:///{tmp}/bench.db"},
            "api": {"bind": "127.0.0.1:0"},
            # Off: the engagement and tool-use series (the records still carry their fields).
            **{
                section: {"enabled": os.environ.get("LOOKOUT_BENCH_EXTRAS", "1") == "1"}
                for section in ("engagement", "tools")
            },
            "detectors": detectors_section(embedder),
        }
    )

    async def measure(daemon: Daemon) -> dict[str, Any]:
        queue = daemon.queue
        result: dict[str, Any] = {}
        while queue.processed == 0:
            await queue.wait_progress()
        if daemon.detection is not None:  # built before the source connects
            # From the detectors' start-up on (an embedder timed on made-up texts, its first
            # call warming a model up: about a second of a core for ONNX), not through it.
            await daemon.detection.warmed_up.wait()
        t0, c0, first = time.perf_counter(), cpu_s(), queue.processed
        watch = DetectionWatch(daemon.registry)
        while queue.processed < expect:
            watch.sample()
            try:
                await asyncio.wait_for(queue.wait_progress(), 30)
            except TimeoutError:
                raise SystemExit(
                    f"lookout stalled at {queue.processed} of {expect} messages: "
                    f"{daemon.views.status().ingest.model_dump_json() if daemon.views else '-'}, "
                    f"reconnects {daemon.prom.bus_reconnects._value.get()}"
                ) from None
            done = queue.processed * batch
            if done >= 100_000 * (len(result.get("rss_path_mb", [])) + 1):
                result.setdefault("rss_path_mb", []).append(round(rss_mb(), 1))
                depth = daemon.registry.get_sample_value("lookout_detector_queue_depth")
                result.setdefault("detector_queue_path", []).append(depth)
                result.setdefault("rss_100k_mb", result["rss_path_mb"][0])
        result.update(elapsed_s=time.perf_counter() - t0, cpu_s=cpu_s() - c0, first=first)
        result["detection"] = watch.finish(result["elapsed_s"])
        result["rss_mb"] = rss_mb()
        return result

    async def session(drain: bool) -> dict[str, Any]:
        daemon = Daemon(settings)
        # Watching starts before the daemon does: it drains the backlog from its first chunk.
        watcher = asyncio.create_task(measure(daemon)) if drain else None
        stop = asyncio.Event()
        runner = asyncio.create_task(daemon.run(stop))
        await asyncio.wait_for(daemon.source.connected.wait(), 20)
        result = await watcher if watcher is not None else {}
        stop.set()
        await runner
        return result

    await session(drain=False)  # opens the persistent session and subscribes
    await asyncio.to_thread(wait_for_go)
    result = await session(drain=True)
    shutil.rmtree(tmp, ignore_errors=True)
    return result


def detectors_section(embedder: str | None) -> dict[str, Any]:
    """LOOKOUT_BENCH_DETECTORS (JSON) for the detectors' other keys, e.g. a CPU budget."""
    section: dict[str, Any] = json.loads(os.environ.get("LOOKOUT_BENCH_DETECTORS", "{}"))
    if embedder:
        section["embedder"] = json.loads(embedder)
    return section


async def forget_session(port: int, client_id: str) -> None:
    """A clean-session connect drops the session, so the broker stops queueing for it."""
    import aiomqtt

    async with aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=True):
        pass


def child(args: argparse.Namespace) -> None:
    client_id = f"{args.role}-{uuid.uuid4().hex[:8]}"
    if args.role == "bare":
        result = asyncio.run(bare(args.port, args.qos, args.expect, client_id))
    else:
        result = asyncio.run(
            lookout(args.port, args.qos, args.expect, args.batch, client_id, args.embedder)
        )
    asyncio.run(forget_session(args.port, client_id))
    print("RESULT " + json.dumps(result), flush=True)


# --- orchestration -----------------------------------------------------------------------


class Broker:
    def __init__(self, workdir: Path, *, stock_inflight: bool = False) -> None:
        self.port = free_port()
        conf = workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            "max_queued_messages 0\nmax_queued_bytes 0\nqueue_qos0_messages true\n"
            + ("" if stock_inflight else "max_inflight_messages 100\n")
        )
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def publish(self, payload: Payload, messages: int) -> None:
        # Published at QoS 1 whatever the subscription's QoS (delivery takes the lower of the
        # two): a publisher then exits only once the broker holds every message, so the
        # subscriber drains a complete backlog rather than racing the publishers.
        publish(self.port, TOPIC, payload, messages)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def run_one(  # noqa: PLR0917
    broker: Broker,
    role: str,
    qos: int,
    payload: Payload,
    messages: int,
    batch: int,
    embedder: str | None = None,
    *,
    live: bool = False,
) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--role",
        role,
        "--port",
        str(broker.port),
        "--qos",
        str(qos),
        "--expect",
        str(messages),
        "--batch",
        str(batch),
    ]
    if embedder and role == "lookout":
        cmd += ["--embedder", embedder]
    sub = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert sub.stdin is not None and sub.stdout is not None
    for line in sub.stdout:
        if line.startswith("PARKED"):
            break
    else:
        raise RuntimeError(f"{role} subscriber exited before subscribing")
    if not live:
        broker.publish(payload, messages)  # a backlog, drained once the subscriber is back
    sub.stdin.write("GO\n")
    sub.stdin.flush()
    if live:
        broker.publish(payload, messages)  # while the subscriber consumes
    out, _ = sub.communicate(timeout=900)
    lines = [x for x in out.splitlines() if x.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"{role} subscriber failed:\n{out[-3000:]}")
    result: dict[str, Any] = json.loads(lines[0][7:])
    counted = messages - result["first"]
    result["msg_per_s"] = counted / result["elapsed_s"]
    result["records_per_s"] = result["msg_per_s"] * batch
    result["cpu_us_per_record"] = result["cpu_s"] / (counted * batch) * 1e6
    if "detection" in result:
        print(describe(f"{messages:,} x {batch} at QoS {qos}", result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["bare", "lookout"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--qos", type=int, default=0)
    parser.add_argument("--expect", type=int)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rss-only", action="store_true", help="only the RSS growth figure")
    parser.add_argument("--embedder", help="lookout's detectors.embedder as JSON")
    parser.add_argument("--live", action="store_true", help="publish while consuming")
    parser.add_argument("--singles", type=int, help="single-record messages a round")
    parser.add_argument("--batches", type=int, help="messages of 50 records a round")
    parser.add_argument(
        "--payload",
        choices=["varied", "repeated"],
        default="varied",
        help="distinct texts per record (default), or one record repeated (before 2026-11-30)",
    )
    args = parser.parse_args()
    if args.role:
        child(args)
        return
    if args.quick:
        args.rounds = 1
    singles = args.singles or (20_000 if args.quick else 100_000)
    batches = args.batches or (1_000 if args.quick else 4_000)
    rss_records = 200_000 if args.quick else 1_000_000

    with tempfile.TemporaryDirectory(prefix="lookout-bench-") as tmp:
        work = Path(tmp)
        single_file = write_payload(work, "single", args.payload, singles, 1, PUBLISHERS, record)
        batch_file = write_payload(work, "batch", args.payload, batches, BATCH, PUBLISHERS, record)
        print(
            f"payload {args.payload}: {payload_bytes(single_file):,.0f} / "
            f"{payload_bytes(batch_file):,.0f} bytes a record (single / in batches)",
            flush=True,
        )
        broker = Broker(work, stock_inflight=args.live)
        rows = []
        try:
            for label, path, messages, batch in (
                ("single records", single_file, singles, 1),
                (f"batches of {BATCH}", batch_file, batches, BATCH),
            )[: 0 if args.rss_only else 2]:
                for qos in (0, 1):
                    # Alternate the two subscribers and keep each one's best round: the box
                    # is shared, and a round spoilt by a neighbour says nothing about either.
                    bases, mine = [], []
                    for _ in range(args.rounds):
                        bases.append(
                            run_one(broker, "bare", qos, path, messages, batch, live=args.live)
                        )
                        mine.append(
                            run_one(
                                broker,
                                "lookout",
                                qos,
                                path,
                                messages,
                                batch,
                                args.embedder,
                                live=args.live,
                            )
                        )
                    best_base = max(bases, key=lambda r: r["msg_per_s"])
                    best_mine = max(mine, key=lambda r: r["msg_per_s"])
                    rows.append((label, qos, best_base, best_mine))
            rss = run_one(
                broker,
                "lookout",
                1,
                batch_file,
                rss_records // BATCH,
                BATCH,
                args.embedder,
                live=args.live,
            )
        finally:
            broker.close()

    print(
        f"\n{'messages':16s} {'QoS':>3s} {'bare aiomqtt msg/s':>19s} {'lookout msg/s':>14s}"
        f" {'ratio':>6s} {'lookout rec/s':>14s} {'CPU us/msg bare':>16s}"
        f" {'CPU us/rec lookout':>19s}"
    )
    for label, qos, base, ours in rows:
        bare_cpu_us = base["cpu_us_per_record"] * (1 if label.startswith("single") else BATCH)
        print(
            f"{label:16s} {qos:3d} {base['msg_per_s']:19,.0f} {ours['msg_per_s']:14,.0f}"
            f" {ours['msg_per_s'] / base['msg_per_s']:5.2f}x {ours['records_per_s']:14,.0f}"
            f" {bare_cpu_us:16.1f} {ours['cpu_us_per_record']:19.2f}"
        )
    for label, qos, _, ours in rows:
        print(describe(f"{label}, QoS {qos}, lookout's best round", ours))
    print(
        f"\nRSS after 100k records: {rss['rss_100k_mb']:.1f} MB; after {rss_records:,}: "
        f"{rss['rss_mb']:.1f} MB (growth {rss['rss_mb'] - rss['rss_100k_mb']:+.1f} MB); "
        f"{rss['records_per_s']:,.0f} records/s at QoS 1\n"
        f"RSS every 100k records (MB): {rss.get('rss_path_mb')}\n"
        f"detection queue depth at those points: {rss.get('detector_queue_path')}"
    )


if __name__ == "__main__":
    main()
