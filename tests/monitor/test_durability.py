"""kill -9 loses nothing and counts nothing twice: `lookout run` as a real process, killed
three times mid-stream at QoS 1 and restarted; and every HTTP POST answered 2xx survives one.
Both on the SQLite store and on PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import random
import signal
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.alerts.test_crash import ready, start
from tests.conftest import PrivateBroker, eventually, free_port
from tests.stores import StoreDb

RECORDS = 20_000


def write_config(
    tmp_path: Path, store_url: str, topic_root: str, broker_url: str, api_port: int
) -> Path:
    config = tmp_path / "lookout.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "bus": {
                    "url": broker_url,
                    "topics": [f"llm/records/{topic_root}/#"],
                    "client_id": f"durable-{topic_root}",
                    "reconnect_min_s": 0.05,
                    "reconnect_max_s": 0.5,
                },
                "store": {"url": store_url, "record_sample_rate": 1.0},
                "api": {"bind": f"127.0.0.1:{api_port}"},
                "detectors": {"enabled": False},
            }
        )
    )
    return config


async def kill_9(proc: asyncio.subprocess.Process) -> None:
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    assert proc.returncode == -9


def publish_all(port: int, topic: str, n: int) -> None:
    """n sequence-numbered records, one per message, at QoS 1, in a steady stream."""
    bodies = ({"id": f"seq-{i}", "latency_ms": 100 + i % 500, "output_tokens": 5} for i in range(n))
    publish_paced(port, ((topic, json.dumps(body)) for body in bodies))


def publish_paced(port: int, messages: Iterable[tuple[str, str]], wait_s: float = 30) -> None:
    """(topic, payload) messages at QoS 1, waiting for the broker every 200 (paced, so that a
    daemon killed meanwhile is killed mid-stream), then for all of them."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = []
        for i, (topic, payload) in enumerate(messages):
            infos.append(client.publish(topic, payload, qos=1))
            if i % 200 == 199:
                infos[-1].wait_for_publish(wait_s)
        for info in infos:
            info.wait_for_publish(wait_s)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_kill_9_three_times_at_qos_1_keeps_every_record_exactly_once(
    tmp_path: Path, private_broker: PrivateBroker, topic_root: str, store_db: StoreDb
) -> None:
    rng = random.Random()
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    config = write_config(tmp_path, store_db.url, topic_root, private_broker.url, api_port)
    stored = "SELECT COUNT(*) FROM records"
    proc = await start(config)
    await eventually(lambda: ready(api), timeout_s=30)
    publisher = asyncio.ensure_future(
        asyncio.to_thread(publish_all, private_broker.port, f"llm/records/{topic_root}", RECORDS)
    )
    try:
        kills = []
        for _ in range(3):
            # A random moment: once a random share of the stream more has been committed.
            target = store_db.count(stored) + rng.randint(1_000, 4_000)
            await eventually(lambda t=target: store_db.count(stored) >= t, timeout_s=60)
            await kill_9(proc)
            kills.append(store_db.count(stored))
            proc = await start(config)
            await eventually(lambda: ready(api), timeout_s=30)
        await asyncio.wait_for(publisher, 60)
        assert kills[0] < RECORDS  # killed mid-stream, with records still to come
        await eventually(lambda: store_db.count(stored) >= RECORDS, timeout_s=60)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 15)
    assert proc.returncode == 0
    ids = {row[0] for row in store_db.query("SELECT id FROM records WHERE app = ?", (topic_root,))}
    partial_count = store_db.count(
        "SELECT SUM(count) FROM partials WHERE app = ? AND model = 'unknown'", (topic_root,)
    )
    assert ids == {f"seq-{i}" for i in range(RECORDS)}
    assert partial_count == RECORDS  # every record counted once in the stored minutes


async def post_until_stopped(
    api: str, worker: int, answered: list[str], stop: asyncio.Event
) -> None:
    """POST small batches as fast as answers come; keep the ids of batches answered 2xx."""
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        n = 0
        while not stop.is_set():
            ids = [f"w{worker}-{n}-{j}" for j in range(5)]
            n += 1
            body: list[dict[str, Any]] = [{"id": i, "app": "poster", "latency_ms": 5} for i in ids]
            try:
                response = await http.post("/api/v1/records", json=body)
            except httpx.HTTPError:
                return  # the daemon is gone
            if 200 <= response.status_code < 300:
                answered.extend(ids)


async def test_kill_9_keeps_every_http_post_answered_2xx(
    tmp_path: Path, private_broker: PrivateBroker, topic_root: str, store_db: StoreDb
) -> None:
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    config = write_config(tmp_path, store_db.url, topic_root, private_broker.url, api_port)
    proc = await start(config)
    answered: list[str] = []
    stop = asyncio.Event()
    try:
        await eventually(lambda: ready(api), timeout_s=30)
        posters = [
            asyncio.ensure_future(post_until_stopped(api, w, answered, stop)) for w in range(8)
        ]
        moment = random.randint(500, 2_000)  # records answered before the kill
        await eventually(lambda: len(answered) >= moment, timeout_s=30)
        await kill_9(proc)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*posters), 15)
    finally:
        if proc.returncode is None:
            await kill_9(proc)
    kept = {row[0] for row in store_db.query("SELECT id FROM records WHERE app = 'poster'")}
    assert answered and set(answered) <= kept
