"""MQTT source: persistent QoS 1 session, back-pressure, reconnect with backoff.

Each connection is a `ManualAckClient` (mqtt_client.py, the only module that knows aiomqtt's
internals): messages go straight into the bounded `IngestQueue`, are acked after processing,
and the socket reader pauses while the queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiomqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lookout.backoff import backoff_s
from lookout.monitor.ingest.mqtt_client import ManualAckClient
from lookout.monitor.ingest.queue import IngestQueue

if TYPE_CHECKING:
    from lookout.monitor.config import BusConfig
    from lookout.monitor.metrics.prom import IngestMetrics

log = structlog.get_logger(__name__)
_SUBACK_TIMEOUT_S = 600.0
MQTT311_INFLIGHT = 20  # Mosquitto's stock max_inflight_messages, for MQTT 3.1.1 clients
# CONNACK codes for "unsupported protocol version": 3.1.1's 1, MQTT 5's 0x84.
_UNSUPPORTED_PROTOCOL = (1, 132)


def _tls_context(cfg: BusConfig) -> ssl.SSLContext | None:
    if not cfg.tls:
        return None
    ctx = ssl.create_default_context(cafile=cfg.ca_file)
    if cfg.cert_file:
        ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
    if cfg.tls_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


class MqttSource:
    """Subscribes and feeds the ingest queue until stopped; reconnects forever."""

    def __init__(
        self,
        cfg: BusConfig,
        queue: IngestQueue,
        prom: IngestMetrics,
        *,
        rng: random.Random | None = None,
        on_inflight_window: Callable[[int], None] | None = None,
        commit: Callable[[], Awaitable[None]] | None = None,
        client_id: str = "lookout",
    ) -> None:
        self._cfg = cfg
        self.client_id = client_id
        self._on_inflight_window = on_inflight_window
        self._commit = commit  # commits what was processed, running its acks
        self._v5_refused = cfg.embedded  # amqtt, the embedded broker, speaks 3.1.1 only
        self._queue = queue
        self._prom = prom
        self._rng = rng or random.Random()
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._client: ManualAckClient | None = None
        queue.set_flow_control(self._pause, self._resume)

    def _pause(self) -> None:
        if self._client is not None:
            self._client.pause_reading()

    def _resume(self) -> None:
        if self._client is not None:
            self._client.resume_reading()

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1) -> bool:
        """Hand a message to the live connection (the broker's session then owns its delivery
        at QoS 1); False while the bus is down."""
        client = self._client
        if client is None or not self.connected.is_set():
            return False
        return client.publish_nowait(topic, payload, qos)

    def topics(self) -> list[str]:
        group = self._cfg.shared_group
        topics = [*self._cfg.topics, *self._cfg.feedback_topics]
        return [f"$share/{group}/{t}" if group else t for t in topics]

    def _v5(self) -> bool:
        cfg = self._cfg
        return (cfg.protocol == "5" and not self._v5_refused) or cfg.shared_group is not None

    def inflight_window(self) -> int:
        """Unacknowledged QoS 1 messages the broker sends before it waits for acks: our
        Receive Maximum on MQTT 5; on 3.1.1 the broker's own limit (Mosquitto's stock 20)."""
        return self._cfg.receive_maximum if self._v5() else MQTT311_INFLIGHT

    def _new_client(self) -> ManualAckClient:
        cfg = self._cfg
        v5 = self._v5()
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if cfg.persistent_session:
                props.SessionExpiryInterval = int(cfg.session_expiry_s)
            # Acks follow commits: let the broker send this many before it waits for them.
            props.ReceiveMaximum = cfg.receive_maximum
            kwargs["properties"] = props
            kwargs["clean_start"] = not cfg.persistent_session
        else:
            kwargs["clean_session"] = not cfg.persistent_session
        return ManualAckClient(
            self._queue,
            cfg.host,
            cfg.port,
            inflight_window=self.inflight_window(),
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            keepalive=cfg.keepalive_s,
            timeout=10.0,
            tls_context=_tls_context(cfg),
            **kwargs,
        )

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[MqttSource]:
        """Run the source in a task of its own for the block; stop() (drain) on the way out."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self.run(), name="mqtt-source")
            try:
                yield self
            finally:
                await self.stop()

    async def stop(self, drain_timeout_s: float = 3.0) -> None:
        """Stop reading, let the queue drain and commit (acking each message), then
        disconnect: a message acked now is not redelivered after the restart."""
        if self._stopping.is_set():
            return
        self._pause()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                await self._queue.wait_idle()
                if self._commit is not None:
                    await self._commit()
        self._stopping.set()

    async def run(self) -> None:
        """Connect, subscribe and feed the queue, reconnecting with backoff, until stop()."""
        attempt = 0
        warned = False
        where = f"{self._cfg.host}:{self._cfg.port}"
        while not self._stopping.is_set():
            client = self._new_client()
            linked = False
            try:
                async with client:
                    self._client = client
                    linked = True
                    attempt, warned = 0, False
                    self.connected.set()
                    self._prom.bus_connected.set(1)
                    if self._on_inflight_window is not None:
                        self._on_inflight_window(self.inflight_window())
                    log.info(
                        "bus_connected",
                        broker=where,
                        topics=self.topics(),
                        client_id=self.client_id,
                        mqtt="5" if self._v5() else "3.1.1",
                    )
                    if self._queue.paused:
                        client.pause_reading()
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                client.retire()
                if not linked and self._refuses_v5(exc):
                    continue  # at once, on MQTT 3.1.1
                self._mark_down()
                self._prom.bus_reconnects.inc()
                # A lost link was logged as bus_disconnected; say "unreachable" once per outage.
                if not (warned or linked or self._stopping.is_set()):
                    warned = True
                    log.error(
                        "bus_unreachable",
                        broker=where,
                        error=str(exc),
                        hint="start an MQTT broker there (e.g. mosquitto), or run "
                        "`lookout run --embedded-broker`; retrying with backoff",
                    )
                delay = backoff_s(
                    attempt,
                    self._rng,
                    base_s=self._cfg.reconnect_min_s,
                    cap_s=self._cfg.reconnect_max_s,
                )
                attempt += 1
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._stopping.wait()
            finally:
                client.retire()
                self._client = None
        self._mark_down()

    def _refuses_v5(self, exc: aiomqtt.MqttError) -> bool:
        """The broker refused MQTT 5 (CONNACK 'unsupported protocol version'): fall back to
        3.1.1 for the rest of this process, with the broker's smaller in-flight window."""
        if not (isinstance(exc, aiomqtt.MqttCodeError) and self._v5()):
            return False
        if self._cfg.shared_group is not None:
            return False  # shared subscriptions need MQTT 5: nothing to fall back to
        code = getattr(exc.rc, "value", exc.rc)
        if code not in _UNSUPPORTED_PROTOCOL:
            return False
        self._v5_refused = True
        log.warning(
            "bus_mqtt5_refused",
            broker=f"{self._cfg.host}:{self._cfg.port}",
            hint="using MQTT 3.1.1: the broker's max_inflight_messages (20 on a stock "
            "Mosquitto) then bounds throughput, as acks wait for commits (docs/deploy.md)",
        )
        return True

    async def _serve(self, client: ManualAckClient) -> None:
        """Subscribe, then hold the connection until stopped or disconnected."""
        subscriptions: list[tuple[str, int]] = [(t, self._cfg.qos) for t in self.topics()]
        # A resumed session's backlog arrives before the SUBACK and is processed while we
        # wait, so the SUBACK may take long; a stop or a lost link must not wait for it.
        subscribe = asyncio.ensure_future(
            client.subscribe(subscriptions, timeout=_SUBACK_TIMEOUT_S)
        )
        stopping = asyncio.ensure_future(self._stopping.wait())
        disconnected = asyncio.ensure_future(client.wait_disconnected())
        try:
            done, _ = await asyncio.wait(
                [subscribe, stopping, disconnected], return_when=asyncio.FIRST_COMPLETED
            )
            if subscribe in done:
                subscribe.result()  # a refused or timed-out subscription raises MqttError
                await asyncio.wait([stopping, disconnected], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (subscribe, stopping, disconnected):
                waiter.cancel()
        if not self._stopping.is_set():
            raise aiomqtt.MqttError("connection lost")

    def _mark_down(self) -> None:
        if self.connected.is_set() and not self._stopping.is_set():
            log.warning("bus_disconnected")
        self.connected.clear()
        self._prom.bus_connected.set(0)
