"""Fuzz the running daemon through a real broker: N generated payloads, then one huge message.

A private Mosquitto (no queue limit, so the broker drops nothing) and `lookout run` in its own
process, detectors on (the packaged static embedder). The generator (seeded) mixes valid
records, record-shaped objects with wrong, huge, negative or odd values, batches mixing both,
arbitrary JSON values and bytes, invalid UTF-8, NaN, cut-off JSON, deep nesting, NULs and
unicode, and batches over the per-message cap. Everything is published at QoS 1 with a unique
id per good record, then the daemon's /metrics are read once it has processed every message.

It prints the crashes (ERROR lines in the daemon's log, e.g. `ingest_failed`, or a daemon
that died: must be 0), the rejections by reason, and that ingested + duplicates + rejected =
sent, where "sent" counts the records of each message as a plain JSON parser sees them (a
message that is not a JSON array, is cut off or is over the size limit is one).

Last, one message of 100,000 records (`{}`), while /healthz is asked every 5 ms: the longest
answer bounds how long one hot-path step holds the event loop.

    .venv/bin/python bench/fuzz.py                 # 100,000 payloads (a few minutes)
    .venv/bin/python bench/fuzz.py --payloads 5000 # quicker
    .venv/bin/python bench/fuzz.py --payloads 0    # only the 100,000-record message, idle daemon
    .venv/bin/python bench/fuzz.py --payloads 0 --cap 1000000   # the same, uncapped (before)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec

from lookout.monitor.ingest.records import WireRecord

TOPIC = "llm/records/fuzz"
MAX_PAYLOAD_BYTES = 1024 * 1024
CAP = 1000  # metrics.max_records_per_message (the default)
# Every key the wire format knows (aliases included), from the decoder's own struct.
FIELDS = [f.encode_name for f in msgspec.structs.fields(WireRecord)]
ODD_TEXT = [
    "",
    "a\u0000b",
    "<!channel>",
    "\u202e",
    "\U0001d518\U0001d52b",
    "\ud7ff",
    "x" * 300,
    "😀" * 50,
]
ODD_NUMBERS = [0, -1, -0.0, 1e308, -1e308, 10**23, 2**63, 1.5, 86_400_001, 10**9 + 1, 1e-320]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 15.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {port}")


# --- the generator -----------------------------------------------------------------------


class Generator:
    def __init__(self, seed: int) -> None:
        self.rnd = random.Random(seed)
        self.good_ids = 0

    def good(self) -> dict[str, Any]:
        self.good_ids += 1
        r = self.rnd
        return {
            "id": f"g{self.good_ids}",
            "app": r.choice(["shop", "support", "search", "ünïcødé", "a" * 200]),
            "model": "gpt-4o-mini",
            "prompt": r.choice([*ODD_TEXT, "Where is my order?"]),
            "response": "It shipped.",
            "latency_ms": r.uniform(0, 5000),
            "input_tokens": r.randint(0, 2000),
            "output_tokens": r.randint(0, 2000),
        }

    def value(self, depth: int = 0) -> Any:
        r = self.rnd
        kind = r.randrange(9 if depth < 3 else 6)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([*ODD_NUMBERS, r.randint(-(10**6), 10**6)])
        if kind == 3:
            return r.uniform(-1e6, 1e6)
        if kind in (4, 5):
            return r.choice([*ODD_TEXT, "ok", "error", "2024-05-01T12:00:00Z", "yesterday"])
        if kind == 6:
            return [self.value(depth + 1) for _ in range(r.randrange(4))]
        return {r.choice([*FIELDS, "x", ""]): self.value(depth + 1) for _ in range(r.randrange(4))}

    def record_like(self) -> dict[str, Any]:
        record = self.good() if self.rnd.random() < 0.5 else {}
        for _ in range(self.rnd.randrange(1, 4)):
            record[self.rnd.choice(FIELDS)] = self.value()
        return record

    def payload(self) -> bytes:
        r = self.rnd
        kind = r.randrange(100)
        if kind < 30:
            return json.dumps(self.good()).encode()
        if kind < 50:
            return json.dumps(self.record_like()).encode()
        if kind < 65:
            batch = [self.good() if r.random() < 0.5 else self.record_like() for _ in range(20)]
            return json.dumps(batch).encode()
        if kind < 72:
            return json.dumps(self.value()).encode()  # may hold NaN / Infinity: invalid JSON
        if kind < 80:
            return r.randbytes(r.randrange(1, 200))
        if kind < 85:
            good = json.dumps(self.good()).encode()
            return good[: r.randrange(1, len(good))]  # cut off
        if kind < 88:
            depth = r.choice([50, 500, 5000, 50_000])
            return b'{"id": "deep", "x": ' + b"[" * depth + b"]" * depth + b"}"
        if kind < 91:
            return b'{"prompt": "\xff\xfe invalid utf-8"}'
        if kind < 94:
            return json.dumps({"prompt": "a\u0000b", "response": "\u0000", "app": "nul"}).encode()
        if kind < 96:
            return b"[" + b",".join([b"{}"] * r.randrange(CAP, 3 * CAP)) + b"]"
        if kind < 97:
            return b'{"prompt": "' + b"x" * (MAX_PAYLOAD_BYTES + 10) + b'"}'
        return r.choice([b"", b"[]", b"null", b"[[]]", b"{}", b'"\\ud800"', b"1e999"])


def units(payload: bytes) -> int:
    """Records in a message as a plain JSON parser sees them; 1 when not an array of them."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return 1
    try:
        value = msgspec.json.decode(payload)
    except (msgspec.DecodeError, RecursionError):
        return 1
    return len(value) if isinstance(value, list) else 1


# --- the daemon ----------------------------------------------------------------------------


def metrics(api_port: int) -> dict[str, float]:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{api_port}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"(\w+)(\{[^}]*\})? ([-+\deE.naif]+)$", line)
        if match is None:
            continue
        name, labels, value = match.groups()
        if name == "lookout_records_total":
            out["ingested"] = out.get("ingested", 0.0) + float(value)
        elif name == "lookout_records_duplicate_total":
            out["duplicates"] = out.get("duplicates", 0.0) + float(value)
        elif name == "lookout_records_rejected_total":
            reason = re.search(r'reason="([^"]*)"', labels or "")
            key = f"rejected:{reason.group(1) if reason else '?'}"
            out[key] = out.get(key, 0.0) + float(value)
        elif name == "lookout_messages_received_total" and 'source="mqtt"' in (labels or ""):
            out["messages"] = out.get("messages", 0.0) + float(value)
    return out


async def publish_all(port: int, payloads: list[bytes]) -> float:
    import aiomqtt

    t0 = time.perf_counter()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"fuzz-{uuid.uuid4().hex[:6]}") as c:
        for payload in payloads:
            await c.publish(TOPIC, payload, qos=1)
    return time.perf_counter() - t0


async def wait_processed(api_port: int, messages: int, timeout_s: float) -> dict[str, float]:
    end = time.monotonic() + timeout_s
    while True:
        seen = await asyncio.to_thread(metrics, api_port)
        if seen.get("messages", 0) >= messages or time.monotonic() > end:
            return seen
        await asyncio.sleep(0.5)


async def healthz_while(api_port: int, busy: asyncio.Future[Any]) -> float:
    """The longest /healthz answer while `busy` runs (asked every 5 ms)."""
    import httpx

    worst = 0.0
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}") as http:
        while not busy.done():
            t0 = time.perf_counter()
            await http.get("/healthz")
            worst = max(worst, time.perf_counter() - t0)
            await asyncio.sleep(0.005)
    return worst


async def idle_healthz(api_port: int) -> float:
    """The longest /healthz answer over a second with nothing sent: the box's own noise."""
    return await healthz_while(api_port, asyncio.ensure_future(asyncio.sleep(1.0)))


async def huge_message(broker_port: int, api_port: int) -> tuple[float, dict[str, float]]:
    before = await asyncio.to_thread(metrics, api_port)
    payload = b"[" + b",".join([b"{}"] * 100_000) + b"]"

    async def send_and_wait() -> dict[str, float]:
        await publish_all(broker_port, [payload])
        return await wait_processed(api_port, int(before.get("messages", 0)) + 1, 60)

    busy = asyncio.ensure_future(send_and_wait())
    worst = await healthz_while(api_port, busy)
    after = busy.result()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return worst, {k: v for k, v in delta.items() if v}


def start(
    workdir: Path, cap: int
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes], int, int]:
    broker_port, api_port = free_port(), free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        f"listener {broker_port} 127.0.0.1\nallow_anonymous true\n"
        "max_queued_messages 0\nmax_inflight_messages 100\n"
        + ("user root\n" if hasattr(sys, "getuid") and __import__("os").geteuid() == 0 else "")
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(broker_port)
    config = workdir / "lookout.yaml"
    config.write_text(
        json.dumps(
            {
                "bus": {
                    "url": f"mqtt://127.0.0.1:{broker_port}",
                    "topics": ["llm/records/#"],
                    "client_id": "lookout-fuzz",
                },
                "store": {"url": f"sqlite:///{workdir}/lookout.db"},
                "api": {"bind": f"127.0.0.1:{api_port}"},
                "metrics": {"max_records_per_message": cap},
            }
        )
    )
    log = (workdir / "lookout.log").open("wb")
    lookout = Path(sys.executable).with_name("lookout")
    daemon = subprocess.Popen(
        [str(lookout), "run", "--config", str(config)], stdout=log, stderr=log
    )
    wait_port(api_port, 30)
    return broker, daemon, broker_port, api_port


async def main(args: argparse.Namespace) -> int:
    gen = Generator(args.seed)
    payloads = [gen.payload() for _ in range(args.payloads)]
    sent_units = sum(units(p) for p in payloads)
    with tempfile.TemporaryDirectory(prefix="lookout-fuzz-") as tmp:
        workdir = Path(tmp)
        broker, daemon, broker_port, api_port = start(workdir, args.cap)
        try:
            await wait_processed(api_port, 0, 1)
            publish_s = await publish_all(broker_port, payloads)
            seen = await wait_processed(api_port, len(payloads), args.timeout)
            idle_s = await idle_healthz(api_port)
            worst_healthz_s, huge = await huge_message(broker_port, api_port)
            alive = daemon.poll() is None
        finally:
            daemon.terminate()
            daemon.wait(30)
            broker.terminate()
            broker.wait(10)
        log_text = (workdir / "lookout.log").read_text(errors="replace")
    errors = [line for line in log_text.splitlines() if "[error" in line or "Traceback" in line]
    rejected = {k.split(":", 1)[1]: int(v) for k, v in seen.items() if k.startswith("rejected:")}
    counted = int(seen.get("ingested", 0) + seen.get("duplicates", 0) + sum(rejected.values()))
    print(f"payloads sent: {len(payloads):,} ({publish_s:.1f} s to publish at QoS 1)")
    print(f"messages processed: {int(seen.get('messages', 0)):,}")
    print(f"crashes: {len(errors) + (not alive)} (ERROR lines {len(errors)}, daemon alive {alive})")
    for line in errors[:5]:
        print("  ", line[-1500:])
    print("rejections by reason:")
    for reason, n in sorted(rejected.items(), key=lambda kv: -kv[1]):
        print(f"  {reason:18} {n:8,}")
    print(
        f"ingested {int(seen.get('ingested', 0)):,} + duplicates "
        f"{int(seen.get('duplicates', 0)):,} + rejected {sum(rejected.values()):,} = "
        f"{counted:,}; sent {sent_units:,} records: "
        + ("equal" if counted == sent_units else "DIFFER")
    )
    print(
        f"one 100,000-record message: {huge}; longest /healthz answer meanwhile "
        f"{worst_healthz_s * 1000:.0f} ms (idle, over a second: {idle_s * 1000:.0f} ms)"
    )
    return 0 if not errors and alive and counted == sent_units else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--payloads", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--cap",
        type=int,
        default=CAP,
        help="metrics.max_records_per_message (1000000: as if uncapped, the old behaviour)",
    )
    sys.exit(asyncio.run(main(parser.parse_args())))
