"""The aiomqtt internals ManualAckClient relies on are still there (no broker needed).

A newer aiomqtt that renames or rewires one of them fails here, naming it, before the pin in
pyproject.toml is raised.
"""

from __future__ import annotations

import asyncio
import re
import struct
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt._packet import decode_publish
from paho.mqtt.enums import MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from prometheus_client import CollectorRegistry

from lookout.monitor.ingest.mqtt_client import (
    AiomqttContractError,
    ManualAckClient,
    check_aiomqtt_internals,
    parse_publish,
)
from lookout.monitor.ingest.queue import IngestQueue
from lookout.monitor.metrics.prom import IngestMetrics


async def test_installed_aiomqtt_has_every_internal_the_client_uses() -> None:
    queue = IngestQueue(16, IngestMetrics(CollectorRegistry()))
    client = ManualAckClient(queue, "127.0.0.1", 1883, identifier="contract")  # no connect
    check_aiomqtt_internals(client)
    assert client._loop is asyncio.get_running_loop()
    assert client._paho is client._client
    assert client._client._manual_ack  # paho acks only when we say so


async def test_plain_aiomqtt_client_satisfies_the_contract() -> None:
    check_aiomqtt_internals(aiomqtt.Client("127.0.0.1", 1883, identifier="contract-plain"))


@pytest.mark.parametrize("missing", ["_client", "_loop", "_disconnected"])
async def test_a_missing_internal_is_named(missing: str, monkeypatch: Any) -> None:
    client = aiomqtt.Client("127.0.0.1", 1883, identifier=f"contract-{missing}")
    monkeypatch.delattr(client, missing)
    with pytest.raises(AiomqttContractError, match=re.escape(f"aiomqtt.Client.{missing}")):
        check_aiomqtt_internals(client)


async def test_a_callback_no_longer_registered_is_named() -> None:
    client = aiomqtt.Client("127.0.0.1", 1883, identifier="contract-callback")
    paho_client: paho.Client = client._client
    paho_client.on_message = lambda *args: None
    with pytest.raises(AiomqttContractError, match="_on_message"):
        check_aiomqtt_internals(client)


async def test_a_changed_socket_open_signature_is_named(monkeypatch: Any) -> None:
    def on_socket_open(self: aiomqtt.Client, client: paho.Client, sock: Any) -> None: ...

    monkeypatch.setattr(aiomqtt.Client, "_on_socket_open", on_socket_open)
    client = aiomqtt.Client("127.0.0.1", 1883, identifier="contract-signature")
    with pytest.raises(AiomqttContractError, match="_on_socket_open now takes"):
        check_aiomqtt_internals(client)


@settings(max_examples=300, deadline=None)
@given(
    topic=st.text(min_size=1, max_size=40).filter(lambda t: "\x00" not in t),
    payload=st.binary(max_size=200),
    qos_mid=st.tuples(st.integers(0, 2), st.integers(1, 65535)),
    v5=st.booleans(),
    user_property=st.none() | st.text(max_size=10).filter(lambda t: "\x00" not in t),
)
def test_parse_publish_agrees_with_paho_or_leaves_the_packet_to_it(
    topic: str, payload: bytes, qos_mid: tuple[int, int], v5: bool, user_property: str | None
) -> None:
    qos, mid = qos_mid
    raw_topic = topic.encode()
    body = struct.pack("!H", len(raw_topic)) + raw_topic
    if qos:
        body += struct.pack("!H", mid)
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if user_property is not None:
        props.UserProperty = ("k", user_property)
    if v5:
        body += props.pack()  # type: ignore[no-untyped-call]
    body += payload
    header = 0x30 | (qos << 1)
    protocol = MQTTProtocolVersion.MQTTv5 if v5 else MQTTProtocolVersion.MQTTv311
    expected = decode_publish(header, body, protocol)
    parsed = parse_publish(header, bytearray(body), v5=v5)
    if qos == 2 or (v5 and user_property is not None):
        assert parsed is None
    else:
        assert parsed == (topic, payload, qos, expected.mid)
        assert parsed[0].encode() == expected.topic and parsed[1] == expected.payload


def test_parse_publish_leaves_malformed_packets_to_paho() -> None:
    assert parse_publish(0x32, b"\x00\x09short", v5=False) is None  # topic runs past the end
    assert parse_publish(0x32, b"\x00\x01a", v5=False) is None  # no packet id
    assert parse_publish(0x30, b"\x00\x02\xc3\x28x", v5=False) is None  # invalid UTF-8
    assert parse_publish(0x30, b"\x00\x01a", v5=True) is None  # no property length
    assert parse_publish(0x30, b"\x00\x00\x00x", v5=True) is None  # a topic alias's empty name
