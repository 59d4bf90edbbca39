"""Restarts of lookout and of the broker lose nothing at QoS 1 (a private Mosquitto)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable

import aiomqtt
import httpx
import pytest

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.conftest import PrivateBroker, eventually, running, sample_value
from tests.stores import StoreDb


async def keep_publishing(port: int, topic: str, n: int, sent: asyncio.Event) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as c:
        for i in range(n):
            body = {"id": f"rec-{i}", "app": "bot", "latency_ms": 100 + i}
            await c.publish(topic, json.dumps(body).encode(), qos=1)
            if i % 50 == 0:
                await asyncio.sleep(0.005)  # a steady stream, not one burst
    sent.set()


@pytest.mark.parametrize("protocol", ["3.1.1", "5"])
async def test_restarting_lookout_while_publishing_loses_no_record(
    private_broker: PrivateBroker,
    settings_for: Callable[..., Settings],
    topic_root: str,
    protocol: str,
    store_db: StoreDb,
) -> None:
    settings = settings_for(
        bus={"url": private_broker.url, "protocol": protocol}, store={"url": store_db.url}
    )
    n = 1500
    sent = asyncio.Event()
    first = Daemon(settings)
    async with running(first) as d:
        publisher = asyncio.create_task(
            keep_publishing(private_broker.port, f"llm/records/{topic_root}", n, sent)
        )
        ok = {"app": "bot", "model": "unknown", "status": "ok"}
        await eventually(lambda: sample_value(d, "lookout_records_total", ok) >= 300, d)
    # lookout is down while the publisher goes on; the broker keeps the session's messages.
    processed_first = sample_value(first, "lookout_records_total", ok)
    assert processed_first < n
    second = Daemon(settings)
    async with running(second) as d2:
        await asyncio.wait_for(publisher, 60)
        assert sent.is_set()
        await eventually(
            lambda: sample_value(d2, "lookout_records_total", ok) >= n - processed_first, d2
        )
        await d2.store.flush()
        assert await d2.store.count_records() == n


async def test_broker_restart_reconnects_and_ingest_resumes(
    private_broker: PrivateBroker, settings_for: Callable[..., Settings], topic_root: str
) -> None:
    settings = settings_for(bus={"url": private_broker.url})
    topic = f"llm/records/{topic_root}"
    ok = {"app": topic_root, "model": "unknown", "status": "ok"}
    async with running(Daemon(settings)) as d:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            assert (await http.get("/readyz")).status_code == 200
            await _publish_one(private_broker.port, topic)
            await eventually(lambda: sample_value(d, "lookout_records_total", ok) == 1, d)

            private_broker.stop()
            await eventually(lambda: not d.source.connected.is_set())
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["bus_connected"] is False

            private_broker.start()
            await asyncio.wait_for(d.source.connected.wait(), 15)
            assert (await http.get("/readyz")).status_code == 200
            await _publish_one(private_broker.port, topic)
            await eventually(lambda: sample_value(d, "lookout_records_total", ok) == 2, d)
        assert sample_value(d, "lookout_bus_reconnects_total") >= 1


async def _publish_one(port: int, topic: str) -> None:
    # With an id: a message processed just before the broker stops may be committed and not
    # yet acknowledged; the broker redelivers it and the id says it was counted.
    body = json.dumps({"id": uuid.uuid4().hex, "latency_ms": 5}).encode()
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as c:
        await c.publish(topic, body, qos=1)


async def test_unreachable_broker_logs_one_clear_line_and_keeps_retrying(
    settings_for: Callable[..., Settings], capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import free_port

    settings = settings_for(bus={"url": f"mqtt://127.0.0.1:{free_port()}"})
    async with running(Daemon(settings), wait_bus=False) as d:
        await eventually(lambda: sample_value(d, "lookout_bus_reconnects_total") >= 3)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/healthz")).status_code == 200
    out = capsys.readouterr().out
    assert out.count("bus_unreachable") == 1
    assert "--embedded-broker" in out


async def test_stopping_right_after_connecting_is_prompt(
    settings_for: Callable[..., Settings],
) -> None:
    # The stop pauses reading, so a SUBACK still on its way can never arrive: the source
    # must not wait for it.
    for _ in range(5):
        daemon = Daemon(settings_for())
        stop = asyncio.Event()
        task = asyncio.create_task(daemon.run(stop))
        await asyncio.wait_for(daemon.source.connected.wait(), 15)
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_a_clean_stop_acknowledges_everything_so_nothing_is_redelivered(
    private_broker: PrivateBroker,
    settings_for: Callable[..., Settings],
    topic_root: str,
    store_db: StoreDb,
) -> None:
    settings = settings_for(bus={"url": private_broker.url}, store={"url": store_db.url})
    topic = f"llm/records/{topic_root}"
    ok = {"app": "bot", "model": "unknown", "status": "ok"}
    async with running(Daemon(settings)) as d:
        # No ids: a redelivery of these could not be recognised, and would count twice.
        await publish_n(private_broker.port, topic, [b'{"app": "bot"}'] * 20)
        await eventually(lambda: sample_value(d, "lookout_records_total", ok) == 20, d)
    async with running(Daemon(settings)) as d2:
        # The broker delivers in order: a redelivery would come before this one.
        await publish_n(private_broker.port, topic, [b'{"app": "bot", "id": "after"}'])
        await eventually(lambda: sample_value(d2, "lookout_records_total", ok) >= 1, d2)
        assert sample_value(d2, "lookout_records_total", ok) == 1


async def publish_n(port: int, topic: str, payloads: list[bytes]) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as c:
        for payload in payloads:
            await c.publish(topic, payload, qos=1)
