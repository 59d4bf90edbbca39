"""Scale-out: 1, 2 and 3 `lookout run` processes (one shared group, one PostgreSQL database)
against the same QoS 1 stream; records/s, CPU per 1,000 records, and each node's share.

Each round starts a private, stock Mosquitto (only its queue limits lifted, so nothing is
dropped while the nodes fall behind), a fresh PostgreSQL database on 127.0.0.1:5432 and N
nodes subscribed to `$share/bench/...` with the cluster on (they read each other's partials and
heartbeat, as in production); four `mosquitto_pub` publish R records at QoS 1 (three apps, ids,
latencies and tokens, no prompt text; detectors and judge off) while the nodes consume. The
rate is records over the time from the first publish to the last record committed; CPU is each
node's process CPU time (/proc) over the same span. The end is watched in PostgreSQL (the
committed partials' counts), not on the nodes, so that watching costs them nothing. On a 2-core
box more nodes cannot go faster: CPU per record is the figure that carries to a bigger cluster.

    .venv/bin/python bench/cluster.py                      # 60,000 records, 1-3 nodes
    .venv/bin/python bench/cluster.py --records 20000 --nodes 1 3
    .venv/bin/python bench/cluster.py --records 240000 --nodes 1 3 --repeat 3   # median of 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
TOPIC = "bench/cluster/records"
LOOKOUT_RUN = (sys.executable, "-m", "lookout", "run", "--config")
_TOTAL = re.compile(r"^lookout_records_total\{[^}]*\} ([0-9.e+]+)$", re.M)


@dataclass
class Round:
    nodes: int
    records_s: float
    cpu_ms_per_1k_total: float
    cpu_ms_per_1k_node: list[float]
    shares: list[float]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_port(port: int) -> None:
    for _ in range(200):
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port)):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def broker(folder: Path) -> Iterator[int]:
    port = free_port()
    conf = folder / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        "max_queued_messages 0\nmax_queued_bytes 0\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def database() -> Iterator[str]:
    name = f"lookout_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def node_config(folder: Path, node: str, mqtt_port: int, api_port: int, pg_url: str) -> Path:
    config = {
        "node": {"id": node},
        "bus": {
            "url": f"mqtt://127.0.0.1:{mqtt_port}",
            "topics": ["bench/cluster/#"],
            "shared_group": "bench",
        },
        "store": {"url": pg_url, "record_sample_rate": 0.01},
        "api": {"bind": f"127.0.0.1:{api_port}"},
        "detectors": {"enabled": False},
        "log_level": "warning",
    }
    path = folder / f"{node}.yaml"
    path.write_text(json.dumps(config))  # JSON is YAML
    return path


def payload_lines(records: int, seed: int = 14) -> list[str]:
    rng = random.Random(seed)
    apps = ("shop", "support", "search")
    return [
        json.dumps(
            {
                "id": f"r{i}",
                "app": apps[i % 3],
                "model": "gpt-4o-mini",
                "latency_ms": round(rng.lognormvariate(6.5, 0.5), 1),
                "input_tokens": rng.randint(50, 400),
                "output_tokens": rng.randint(20, 300),
            }
        )
        for i in range(records)
    ]


def counted(api_port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=5).text
    return sum(float(v) for v in _TOTAL.findall(text))


def publish(port: int, folder: Path, lines: list[str], publishers: int = 4) -> None:
    """`publishers` mosquitto_pub at QoS 1, each a quarter of the lines; returns at once."""
    for k in range(publishers):
        part = folder / f"part{k}.jsonl"
        part.write_text("\n".join(lines[k::publishers]) + "\n")
        subprocess.Popen(
            ["mosquitto_pub", "-p", str(port), "-q", "1", "-t", TOPIC, "-l"],
            stdin=part.open("rb"),
            stdout=subprocess.DEVNULL,
        )


def run_round(n: int, records: int) -> Round:
    with tempfile.TemporaryDirectory() as tmp, database() as pg_url:
        folder = Path(tmp)
        with broker(folder) as mqtt_port:
            apis = [free_port() for _ in range(n)]
            procs = [
                subprocess.Popen(
                    [*LOOKOUT_RUN, str(node_config(folder, f"n{i}", mqtt_port, apis[i], pg_url))],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                for i in range(n)
            ]
            try:
                return _measure(n, records, folder, mqtt_port, apis, procs, pg_url)
            finally:
                for p in procs:
                    p.terminate()
                for p in procs:
                    p.wait(30)


def committed(pg_url: str) -> int:
    """Records the nodes have committed (their partials' counts): read from PostgreSQL, so
    that watching for the end costs the nodes nothing."""
    with psycopg.connect(pg_url, autocommit=True) as db:
        row = db.execute("SELECT COALESCE(SUM(count), 0) FROM partials").fetchone()
    return int(row[0]) if row else 0


def _measure(  # noqa: PLR0917
    n: int,
    records: int,
    folder: Path,
    mqtt_port: int,
    apis: list[int],
    procs: list[Any],
    pg_url: str,
) -> Round:
    for port in apis:
        wait_port(port)
        for _ in range(200):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                break
            time.sleep(0.1)
    lines = payload_lines(records)
    before = [cpu_s(p.pid) for p in procs]
    start = time.monotonic()
    publish(mqtt_port, folder, lines)
    while (done := committed(pg_url)) < records:
        time.sleep(0.1)
        if time.monotonic() - start > 600:
            raise RuntimeError(f"only {done} of {records} records committed")
    wall = time.monotonic() - start
    cpu = [cpu_s(p.pid) - b for p, b in zip(procs, before, strict=True)]
    counts = [counted(port) for port in apis]
    return Round(
        nodes=n,
        records_s=records / wall,
        cpu_ms_per_1k_total=sum(cpu) / records * 1e6,
        cpu_ms_per_1k_node=[c / max(k, 1) * 1e6 for c, k in zip(cpu, counts, strict=True)],
        shares=[k / records for k in counts],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=60_000)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument(
        "--repeat", type=int, default=1, help="rounds of every node count, interleaved"
    )
    args = parser.parse_args()
    repeats = [[run_round(n, args.records) for n in args.nodes] for _ in range(args.repeat)]
    print(f"{args.records} records at QoS 1, stock Mosquitto, PostgreSQL; CPU in ms per 1,000")
    print("nodes  records/s  cpu total/1k  cpu per node/1k        shares")
    for results in repeats:
        for r in results:
            per_node = " ".join(f"{c:.1f}" for c in r.cpu_ms_per_1k_node)
            shares = " ".join(f"{s:.1%}" for s in r.shares)
            print(
                f"{r.nodes:5d}  {r.records_s:9.0f}  {r.cpu_ms_per_1k_total:12.1f}"
                f"  {per_node:>15}  {shares:>12}"
            )
    for k, n in enumerate(args.nodes[1:], start=1):
        growths = [rs[k].cpu_ms_per_1k_total / rs[0].cpu_ms_per_1k_total - 1 for rs in repeats]
        each = ", ".join(f"{g:+.1%}" for g in growths)
        print(
            f"CPU per record, {n} nodes vs {args.nodes[0]}: {each}"
            f" (median {statistics.median(growths):+.1%})"
        )


if __name__ == "__main__":
    main()
