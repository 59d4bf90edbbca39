"""Ingest through a real Mosquitto on loopback, each test on its own topic."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.ingest.pipeline import IngestResult
from tests.conftest import eventually, make_settings, publish, running, sample_value


def records_total(d: Daemon) -> float:
    return sum(
        sample_value(d, "lookout_records_total", {"app": a, "model": m, "status": s})
        for a in ("shop", "bot", "default")
        for m in ("gpt-4o-mini", "unknown")
        for s in ("ok", "error")
    )


def rejected(d: Daemon, reason: str) -> float:
    return sample_value(d, "lookout_records_rejected_total", {"reason": reason})


async def test_bad_payloads_are_counted_and_sampled_while_good_records_flow(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    daemon = Daemon(settings_for())
    good = {"app": "shop", "model": "gpt-4o-mini", "latency_ms": 250, "output_tokens": 5}
    payloads = [
        json.dumps(good).encode(),
        b"{this is not json",
        b'{"prompt": "caf\xc3\x28"}',
        json.dumps({"app": "shop", "latency_ms": "fast"}).encode(),
        json.dumps({"app": "shop", "latency_ms": -4}).encode(),
        b'{"prompt": "' + b"x" * (1024 * 1024) + b'"}',
        json.dumps([good, {"app": "shop", "input_tokens": -1}, good, "nope"]).encode(),
    ]
    async with running(daemon) as d:
        await publish(payloads, f"llm/records/{topic_root}/x")
        await eventually(lambda: records_total(d) >= 3 and rejected(d, "not_an_object") >= 1, d)
        assert records_total(d) == 3
        assert rejected(d, "invalid_json") == 1
        assert rejected(d, "invalid_utf8") == 1
        assert rejected(d, "wrong_type") == 1
        assert rejected(d, "negative_value") == 2
        assert rejected(d, "too_large") == 1
        assert rejected(d, "not_an_object") == 1
        await d.store.flush()
        samples = await d.store.rejected(limit=50)
        assert sorted(s.reason for s in samples) == sorted(
            [
                "invalid_json",
                "invalid_utf8",
                "wrong_type",
                "negative_value",
                "negative_value",
                "too_large",
                "not_an_object",
            ]
        )
        assert all(s.source == "mqtt" and s.sample for s in samples)
        # The daemon is still healthy and counting.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            body = (await http.get("/api/v1/rejected")).json()
            assert len(body) == 7
            status = (await http.get("/api/v1/status")).json()
        shop = next(s for s in status["series"] if s["app"] == "shop" and s["model"] == "*")
        assert shop["count"] == 3
        assert shop["latency_p50"] == 0.25


async def test_app_comes_from_the_topic_and_series_appear_in_metrics(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    daemon = Daemon(settings_for())
    records = [
        {"model": "gpt-4o-mini", "latency_ms": 1000 + i, "input_tokens": 10, "output_tokens": 4}
        for i in range(20)
    ]
    async with running(daemon) as d:
        await publish([json.dumps(records).encode()], f"llm/records/{topic_root}")
        labels = {"app": topic_root, "model": "gpt-4o-mini", "status": "ok"}
        await eventually(lambda: sample_value(d, "lookout_records_total", labels) == 20, d)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            text = (await http.get("/metrics")).text
        out = f'app="{topic_root}",direction="output",model="gpt-4o-mini"'
        assert f"lookout_tokens_total{{{out}}} 80.0" in text
        assert (
            f'lookout_request_latency_seconds_count{{app="{topic_root}",model="gpt-4o-mini"}} 20.0'
            in text
        )
        assert f'lookout_latency_p95_seconds{{app="{topic_root}",model="*"}}' in text


async def test_redelivered_duplicates_are_ignored(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    daemon = Daemon(settings_for())
    payload = json.dumps({"id": "same-id", "app": "bot", "latency_ms": 10}).encode()
    async with running(daemon) as d:
        await publish([payload, payload, payload], f"llm/records/{topic_root}")
        await eventually(lambda: sample_value(d, "lookout_records_duplicate_total") == 2, d)
        labels = {"app": "bot", "model": "unknown", "status": "ok"}
        assert sample_value(d, "lookout_records_total", labels) == 1


async def test_back_pressure_not_loss_when_processing_falls_behind(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    daemon = Daemon(settings_for(bus={"queue_size": 10}, store={"record_sample_rate": 0.0}))
    process = daemon.pipeline.process_payload

    def slow_process(*args: Any, **kwargs: Any) -> IngestResult:
        time.sleep(0.001)  # CPU-heavy processing, slower than the network
        return process(*args, **kwargs)

    daemon.pipeline.process_payload = slow_process  # type: ignore[method-assign]
    n = 1000
    payloads = [json.dumps({"app": "bot", "latency_ms": i}).encode() for i in range(n)]
    async with running(daemon) as d:
        await publish(payloads, f"llm/records/{topic_root}", qos=1)
        labels = {"app": "bot", "model": "unknown", "status": "ok"}
        await eventually(lambda: sample_value(d, "lookout_records_total", labels) == n, d)
        assert sample_value(d, "lookout_dropped_total", {"queue": "ingest"}) == 0
        assert len(d.queue) == 0


async def test_shared_subscription_splits_records_between_instances(
    tmp_path: Path, topic_root: str
) -> None:
    group = f"g{topic_root}"
    one = Daemon(make_settings(tmp_path / "one", topic_root, bus={"shared_group": group}))
    two = Daemon(make_settings(tmp_path / "two", topic_root, bus={"shared_group": group}))
    payloads = [json.dumps({"id": f"r{i}", "app": "bot"}).encode() for i in range(200)]
    ok = {"app": "bot", "model": "unknown", "status": "ok"}

    def total() -> float:
        return sample_value(one, "lookout_records_total", ok) + sample_value(
            two, "lookout_records_total", ok
        )

    async with running(one), running(two):
        assert one.source.topics() == [
            f"$share/{group}/llm/records/{topic_root}/#",
            f"$share/{group}/llm/feedback/{topic_root}/#",
        ]
        await publish(payloads, f"llm/records/{topic_root}")
        await eventually(lambda: total() == 200)
    # Each record went to exactly one instance, and both took a share.
    assert sample_value(one, "lookout_records_total", ok) > 0
    assert sample_value(two, "lookout_records_total", ok) > 0


@contextlib.asynccontextmanager
async def mqtt_311_only_front(port: int = 1883) -> AsyncIterator[int]:
    """A broker that speaks MQTT 3.1.1 only: it refuses an MQTT 5 CONNECT with 'unsupported
    protocol version' (0x84) and passes everything else to the real Mosquitto at `port`."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.read(65536)
        i = 1
        while head[i] & 0x80:  # the remaining length's varint
            i += 1
        if head[i + 7] == 5:  # after the length: 00 04 'MQTT', then the protocol level
            writer.write(bytes([0x20, 0x03, 0x00, 0x84, 0x00]))
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        up_writer.write(head)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_a_broker_that_refuses_mqtt_5_gets_3_1_1_and_ingest_flows(
    settings_for: Callable[..., Settings], topic_root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    async with mqtt_311_only_front() as port:
        daemon = Daemon(settings_for(bus={"url": f"mqtt://127.0.0.1:{port}"}))
        assert daemon.settings.bus.protocol == "5"  # the default
        async with running(daemon) as d:
            assert d.source.inflight_window() == 20
            await publish(
                [b'{"app": "bot", "latency_ms": 5}'], f"llm/records/{topic_root}", port=port
            )
            ok = {"app": "bot", "model": "unknown", "status": "ok"}
            await eventually(lambda: sample_value(d, "lookout_records_total", ok) == 1, d)
    out = capsys.readouterr().out
    assert out.count("bus_mqtt5_refused") == 1
    assert "bus_unreachable" not in out


async def test_publishes_with_and_without_mqtt_5_properties_all_arrive(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    # Plain publishes take lookout's fast path; those with properties paho's own.
    topic = f"llm/records/{topic_root}"
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = [("tenant", "acme")]
    props.ContentType = "application/json"
    daemon = Daemon(settings_for())
    async with running(daemon) as d:
        async with aiomqtt.Client(
            "127.0.0.1", 1883, identifier=f"pub5-{topic_root}", protocol=aiomqtt.ProtocolVersion.V5
        ) as pub:
            for i in range(30):
                record = json.dumps({"id": f"r{i}", "app": "bot", "latency_ms": i}).encode()
                await pub.publish(
                    topic, record, qos=(0, 1, 2)[i % 3], properties=props if i % 2 else None
                )
        ok = {"app": "bot", "model": "unknown", "status": "ok"}
        await eventually(lambda: sample_value(d, "lookout_records_total", ok) == 30, d)
        client = d.source._client
        assert client is not None
        # The broker delivers QoS 2 publishes at the subscription's QoS 1: every publish
        # without properties (i even) takes the fast path, those with them paho's.
        assert client.fast_path_messages == 15
        await d.store.flush()
        assert await d.store.get_record("r29") is not None


def node_settings(tmp_path: Path, topic_root: str, node: str) -> Settings:
    # No client_id: each node's session is named after its node.id.
    return make_settings(
        tmp_path / node,
        topic_root,
        node={"id": f"{node}-{topic_root}"},
        bus={"shared_group": f"g{topic_root}", "client_id": None},
    )


def stored_ids(daemon: Daemon) -> set[str]:
    with sqlite3.connect(daemon.settings.store.url.removeprefix("sqlite:///")) as db:
        return {row[0] for row in db.execute("SELECT id FROM records")}


async def test_nodes_of_a_shared_group_split_the_records_evenly(
    tmp_path: Path, topic_root: str
) -> None:
    one = Daemon(node_settings(tmp_path, topic_root, "n1"))
    two = Daemon(node_settings(tmp_path, topic_root, "n2"))
    assert one.source.client_id == f"lookout-n1-{topic_root}"
    payloads = [json.dumps({"id": f"r{i}", "app": "bot"}).encode() for i in range(400)]
    ok = {"app": "bot", "model": "unknown", "status": "ok"}
    async with running(one), running(two):
        await publish(payloads, f"llm/records/{topic_root}")
        await eventually(
            lambda: (
                sample_value(one, "lookout_records_total", ok)
                + sample_value(two, "lookout_records_total", ok)
                == 400
            )
        )
    # Mosquitto hands a shared subscription's messages round-robin: half each, +-5%.
    assert 180 <= sample_value(one, "lookout_records_total", ok) <= 220


async def test_a_node_that_restarts_gets_the_records_queued_for_it_while_it_was_down(
    tmp_path: Path, topic_root: str
) -> None:
    # The broker keeps a stopped node's persistent session in the group and queues its share:
    # a delay, not a loss, when the node comes back under the same node.id.
    payloads = [json.dumps({"id": f"r{i}", "app": "bot"}).encode() for i in range(200)]
    ok = {"app": "bot", "model": "unknown", "status": "ok"}
    two = Daemon(node_settings(tmp_path, topic_root, "n2"))
    async with running(two):
        async with running(Daemon(node_settings(tmp_path, topic_root, "n1"))):
            pass  # n1 joins the group and stops: its session stays
        await publish(payloads, f"llm/records/{topic_root}")
        await eventually(lambda: sample_value(two, "lookout_records_total", ok) >= 80)
        back = Daemon(node_settings(tmp_path, topic_root, "n1"))
        async with running(back):
            await eventually(
                lambda: (
                    sample_value(back, "lookout_records_total", ok)
                    + sample_value(two, "lookout_records_total", ok)
                    == 200
                )
            )
            assert sample_value(back, "lookout_records_total", ok) >= 80
    # Every record stored once, across the two nodes' stores.
    first, second = stored_ids(back), stored_ids(two)
    assert not first & second and len(first | second) == 200


async def test_every_record_is_acked_once_committed_big_and_small_alike(
    tmp_path: Path, topic_root: str
) -> None:
    # Reads take up to 64 KB at a time and acks go out in bulk: packets that straddle reads,
    # and records far bigger than a read, must all be counted once and acked, so that a
    # restarted node (the same persistent session) gets nothing again.
    big = "x" * 150_000  # over two reads' worth
    payloads = [
        json.dumps(
            {"id": f"r{i}", "app": "bot", "prompt": big if i % 50 == 7 else "hi" * i}
        ).encode()
        for i in range(2000)
    ]
    ok = {"app": "bot", "model": "unknown", "status": "ok"}
    first = Daemon(node_settings(tmp_path, topic_root, "n1"))
    async with running(first):
        await publish(payloads, f"llm/records/{topic_root}")
        await eventually(lambda: sample_value(first, "lookout_records_total", ok) == 2000)
        assert sample_value(first, "lookout_records_duplicate_total") == 0
        client = first.source._client
        assert client is not None
        assert client.fast_path_messages == 2000
    again = Daemon(node_settings(tmp_path, topic_root, "n1"))
    async with running(again):
        # Queued behind anything the broker would redeliver: once it is counted, all is in.
        await publish(
            [json.dumps({"id": "last", "app": "bot"}).encode()], f"llm/records/{topic_root}"
        )
        await eventually(lambda: sample_value(again, "lookout_records_total", ok) == 1)
        assert sample_value(again, "lookout_records_duplicate_total") == 0
