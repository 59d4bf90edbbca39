"""The daemon's CPU share at a steady, modest rate: what lookout costs a box while nearly idle.

    .venv/bin/python bench/quiet.py                       # 40 records/s, static embedder
    .venv/bin/python bench/quiet.py --embedder '{"kind": "onnx"}'
    .venv/bin/python bench/quiet.py --env OPENBLAS_NUM_THREADS=1   # an operator's workaround

`lookout run` in a child process, as an operator starts it, with a private Mosquitto, the
detectors on every record (prompt and response), a 3,000-text reference per field and a 1 s
evaluation interval. The bench publishes CLINC150 in-scope utterances (short requests to a
bank-like assistant, as Banking77's) as prompts, first fast until both references are fitted,
then at a steady --rate; after --warmup seconds it reads the child's CPU time (user + system,
all threads) over --seconds of wall time. Target (issue 17): <= 0.15 of a core at 40 records/s.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from clinc import load
from ingest import Broker, free_port
from paho.mqtt.enums import CallbackAPIVersion

TOPIC = "llm/records/quiet"
REFERENCE = 3000


def records(seed: int = 0) -> list[dict[str, Any]]:
    texts = [r.text for r in load() if not r.is_oos]
    random.Random(seed).shuffle(texts)
    out = []
    for i, text in enumerate(texts):
        answer = texts[(i * 7919) % len(texts)]
        out.append(
            {
                "app": "bank-assistant",
                "model": "gpt-4o-mini",
                "prompt": text,
                "response": f"Sure, I can help with that. You asked: {answer}",
                "latency_ms": 300 + i % 700,
                "input_tokens": 40 + i % 30,
                "output_tokens": 60 + i % 50,
                "user_id": f"u-{i % 500}",
            }
        )
    return out


def config(workdir: Path, broker_port: int, api_port: int, embedder: str | None) -> Path:
    detectors: dict[str, Any] = {"reference": {"auto_size": REFERENCE}}
    if embedder:
        detectors["embedder"] = json.loads(embedder)
    cfg = {
        "bus": {"url": f"mqtt://127.0.0.1:{broker_port}", "topics": [TOPIC]},
        "store": {"url": f"sqlite:///{workdir}/quiet.db"},
        "api": {"bind": f"127.0.0.1:{api_port}"},
        "eval_interval": 1.0,
        "log_level": "warning",
        "detectors": detectors,
    }
    path = workdir / "lookout.json"  # JSON is YAML
    path.write_text(json.dumps(cfg))
    return path


def fitted(api: str) -> bool:
    try:
        status = httpx.get(f"{api}/api/v1/status", timeout=5).json()
    except httpx.HTTPError:
        return False
    tracks = status.get("detectors", [])
    return len(tracks) == 2 and all(t.get("drift_threshold") is not None for t in tracks)


def steady(
    client: mqtt.Client, rows: list[dict[str, Any]], i: int, rate: float, seconds: float
) -> int:
    t0 = time.perf_counter()
    sent = 0
    while (elapsed := time.perf_counter() - t0) < seconds:
        due = int(elapsed * rate)
        while sent < due:
            row = rows[i % len(rows)]
            client.publish(TOPIC, json.dumps({**row, "ts": time.time()}))
            sent, i = sent + 1, i + 1
        time.sleep(0.005)
    return i


def run(args: argparse.Namespace) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="lookout-quiet-"))
    broker = Broker(workdir)
    api_port = free_port()
    cfg = config(workdir, broker.port, api_port, args.embedder)
    env = {k: v for k, v in os.environ.items() if k not in args.unset}
    env.update(dict(e.split("=", 1) for e in args.env))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "lookout", "run", "--config", str(cfg)],
        env=env,
        stderr=subprocess.DEVNULL if args.quiet_logs else None,
    )
    api = f"http://127.0.0.1:{api_port}"
    client = mqtt.Client(CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    rows = records()
    try:
        started = time.monotonic()
        i = 0
        while not fitted(api):  # fast until the references are fitted (and calibrated)
            if time.monotonic() - started > 900 or daemon.poll() is not None:
                raise SystemExit("the daemon did not fit its references in time")
            # Enough for both references, then a trickle while they are calibrated.
            i = steady(client, rows, i, 400 if i < 2 * REFERENCE else args.rate, 1.0)
        fit_s = time.monotonic() - started
        i = steady(client, rows, i, args.rate, args.warmup)
        c0, t0 = cpu_s(daemon.pid), time.perf_counter()
        i = steady(client, rows, i, args.rate, args.seconds)
        cpu, t1 = cpu_s(daemon.pid) - c0, time.perf_counter()
        metrics = httpx.get(f"{api}/metrics", timeout=5).text
        return {
            "core_share": cpu / (t1 - t0),
            "seconds": t1 - t0,
            "threads": status(daemon.pid, "Threads"),
            "rss_mb": status(daemon.pid, "VmRSS") / 1024,
            "embedded": _sample(metrics, "lookout_embedded_texts_total"),
            "fit_s": fit_s,
        }
    finally:
        client.loop_stop()
        client.disconnect()
        daemon.terminate()
        daemon.wait(30)
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)


def cpu_s(pid: int) -> float:
    """User + system CPU of a process, all its threads (/proc/PID/stat, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1])
    return 0


def _sample(metrics: str, name: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=40.0, help="records/s in steady state")
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="measured wall time")
    parser.add_argument("--embedder", help="detectors.embedder as JSON")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the daemon")
    parser.add_argument("--unset", action="append", default=[], help="a variable to drop")
    parser.add_argument("--quiet-logs", action="store_true")
    args = parser.parse_args()
    result = run(args)
    print(
        f"lookout at {args.rate:g} records/s, detectors on (embedder "
        f"{args.embedder or 'default'}), {' '.join(args.env) or 'no extra env'}: "
        f"{result['core_share']:.3f} of a core over {result['seconds']:.0f} s; "
        f"{result['threads']} threads, RSS {result['rss_mb']:.0f} MB, "
        f"{result['embedded']:.0f} texts embedded in all; references fitted after "
        f"{result['fit_s']:.0f} s"
    )


if __name__ == "__main__":
    main()
