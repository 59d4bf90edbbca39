"""The aiomqtt internals ManualAckClient relies on are still there (no broker needed).

A newer aiomqtt that renames or rewires one of them fails here, naming it, before the pin in
pyproject.toml is raised.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
import pytest
from prometheus_client import CollectorRegistry

from lookout.monitor.ingest.mqtt_client import (
    AiomqttContractError,
    ManualAckClient,
    check_aiomqtt_internals,
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
