"""OTLP ingest throughput: LLM call spans through the OTLP/HTTP receiver into the pipeline,
against MQTT records through the same pipeline in the same run.

OTLP: the daemon (default settings, the receiver on) runs in this process; a sender process
builds `--batches` export requests of 512 spans each (as the SDK's BatchSpanProcessor sends
them: protobuf, upstream GenAI conventions, a ~400-character prompt and answer, tokens, model,
provider, unique ids) before the clock starts, then posts them over `--senders` keep-alive
connections, each request answered once its records are committed. Spans/s is spans over the
sender's wall time; CPU per span is this process's CPU time (loop, store thread, detectors)
over the spans. MQTT: bench/ingest.py's drain of batches of 50 records by lookout, on a
private Mosquitto. The box is shared: compare the ratio and the CPU per span/record.

    .venv/bin/python bench/otlp.py            # 400 requests (204,800 spans), 2 senders
    .venv/bin/python bench/otlp.py --quick    # 100 requests
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import BATCH, PUBLISHERS, Broker, cpu_s, record, run_one
from ingest_payloads import write_payload

SPANS_PER_REQUEST = 512
PROMPT = "Where is my order? I ordered a pair of running shoes last Tuesday " * 5
ANSWER = "Your order shipped yesterday and should arrive within three days. " * 5


def build_requests(count: int, seed: int) -> list[bytes]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )
    from opentelemetry.proto.trace.v1.trace_pb2 import Span

    from lookout.monitor.ingest.otlp_decode import keyvalues

    start = int(time.time() * 1e9)
    bodies = []
    for r in range(count):
        request = ExportTraceServiceRequest()
        resource_spans = request.resource_spans.add()
        resource_spans.resource.attributes.extend(keyvalues({"service.name": "bench"}))
        scope = resource_spans.scope_spans.add()
        scope.scope.name = "opentelemetry.instrumentation.openai_v2"
        for i in range(SPANS_PER_REQUEST):
            n = r * SPANS_PER_REQUEST + i
            attrs = {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                "gen_ai.response.id": f"chatcmpl-{n}",
                "gen_ai.response.finish_reasons": ["stop"],
                "gen_ai.usage.input_tokens": 150,
                "gen_ai.usage.output_tokens": 80 + n % 40,
                "server.address": "api.openai.com",
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": PROMPT}]}]
                ),
                "gen_ai.output.messages": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": ANSWER}]}]
                ),
            }
            scope.spans.append(
                Span(
                    trace_id=(seed << 64 | n).to_bytes(16, "big"),
                    span_id=(n + 1).to_bytes(8, "big"),
                    name="chat gpt-4o-mini",
                    kind=Span.SPAN_KIND_CLIENT,
                    start_time_unix_nano=start + n * 1000,
                    end_time_unix_nano=start + n * 1000 + (400 + n % 900) * 1_000_000,
                    attributes=keyvalues(attrs),
                )
            )
        bodies.append(request.SerializeToString())
    return bodies


def sender(port: int, batches: int, senders: int) -> None:
    """The sender process: build, wait for GO, post, print the wall time."""
    bodies = build_requests(batches, seed=int(time.time()))
    print(f"READY {sum(map(len, bodies)) / len(bodies):.0f}", flush=True)
    sys.stdin.readline()
    failures: list[str] = []

    def post(share: list[bytes]) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/x-protobuf"}
        for body in share:
            conn.request("POST", "/v1/traces", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                failures.append(str(response.status))

    t0, c0 = time.perf_counter(), cpu_s()
    threads = [threading.Thread(target=post, args=(bodies[i::senders],)) for i in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed, cpu = time.perf_counter() - t0, cpu_s() - c0
    result = {"elapsed_s": elapsed, "sender_cpu_s": cpu, "failures": failures}
    print("RESULT " + json.dumps(result), flush=True)


async def otlp_run(broker_port: int, batches: int, senders: int) -> dict[str, Any]:
    from lookout.monitor.config import Settings
    from lookout.monitor.daemon import Daemon
    from lookout.monitor.logs import configure_logging

    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="lookout-bench-otlp-") as tmp:
        settings = Settings.model_validate(
            {
                "bus": {"url": f"mqtt://127.0.0.1:{broker_port}", "client_id": "bench-otlp"},
                "store": {"url": f"sqlite:///{tmp}/bench.db"},
                "api": {"bind": "127.0.0.1:0"},
                "otlp": {"enabled": True, "bind": "127.0.0.1:0"},
            }
        )
        daemon = Daemon(settings)
        stop = asyncio.Event()
        runner = asyncio.create_task(daemon.run(stop))
        await asyncio.wait_for(daemon.ready.wait(), 60)
        assert daemon.otlp is not None and daemon.otlp.port is not None
        cmd = [sys.executable, __file__, "--role", "sender", "--port", str(daemon.otlp.port)]
        cmd += ["--batches", str(batches), "--senders", str(senders)]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdin is not None and proc.stdout is not None
        ready = (await proc.stdout.readline()).decode()
        c0 = cpu_s()
        proc.stdin.write(b"GO\n")
        await proc.stdin.drain()
        line = (await proc.stdout.readline()).decode()
        cpu = cpu_s() - c0
        await proc.wait()
        counted = daemon.registry.get_sample_value(
            "lookout_otlp_spans_total", {"outcome": "record"}
        )
        stop.set()
        await runner
    result: dict[str, Any] = json.loads(line[7:])
    spans = batches * SPANS_PER_REQUEST
    assert counted == spans and not result["failures"], (counted, result["failures"][:5])
    result.update(
        spans=spans,
        request_bytes=float(ready.split()[1]),
        spans_per_s=spans / result["elapsed_s"],
        cpu_us_per_span=cpu / spans * 1e6,
        daemon_cores=cpu / result["elapsed_s"],
        sender_cores=result["sender_cpu_s"] / result["elapsed_s"],
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--role", choices=["sender"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--senders", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.role == "sender":
        sender(args.port, args.batches, args.senders)
        return
    batches = 100 if args.quick else args.batches
    with tempfile.TemporaryDirectory(prefix="lookout-bench-") as tmp:
        work = Path(tmp)
        broker = Broker(work)
        try:
            otlp = asyncio.run(otlp_run(broker.port, batches, args.senders))
            messages = otlp["spans"] // BATCH
            # The repeated payload: the spans' texts repeat too, so neither side embeds much.
            batch = write_payload(work, "batch", "repeated", messages, BATCH, PUBLISHERS, record)
            mqtt = run_one(broker, "lookout", 1, batch, messages, BATCH)
        finally:
            broker.close()
    print(
        f"\nOTLP: {otlp['spans']:,} LLM spans in {batches} requests of {SPANS_PER_REQUEST} "
        f"(~{otlp['request_bytes'] / 1024:.0f} KiB each), {args.senders} senders\n"
        f"  {otlp['spans_per_s']:,.0f} spans/s, {otlp['cpu_us_per_span']:.1f} us CPU per span "
        f"(= {1e6 / otlp['cpu_us_per_span']:,.0f} spans/s per core); the daemon used "
        f"{otlp['daemon_cores']:.2f} cores, the sender {otlp['sender_cores']:.2f}\n"
        f"MQTT: {mqtt['records_per_s']:,.0f} records/s in batches of {BATCH} at QoS 1, "
        f"{mqtt['cpu_us_per_record']:.1f} us CPU per record\n"
        f"OTLP/MQTT: {otlp['spans_per_s'] / mqtt['records_per_s']:.2f}x the rate, "
        f"{otlp['cpu_us_per_span'] / mqtt['cpu_us_per_record']:.2f}x the CPU per item"
    )


if __name__ == "__main__":
    main()
