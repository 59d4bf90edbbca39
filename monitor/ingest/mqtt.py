"""MQTT source on aiomqtt 2.x: persistent QoS 1 session, back-pressure, reconnect with backoff.

aiomqtt owns the connection (TLS, auth, MQTT 5 properties). Its message iterator wraps every
message in an asyncio task (most of its per-message cost, PERF_NOTES), and its queue drops
when full; so `_LookoutClient` takes messages straight from paho's callback into our bounded
`IngestQueue`, acknowledges them manually after processing, and pauses the socket reader
when the queue is full.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import ssl
from typing import TYPE_CHECKING, Any

import aiomqtt
import paho.mqtt.client as paho
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from lookout.backoff import backoff_s
from lookout.monitor.ingest.queue import Inbound, IngestQueue

if TYPE_CHECKING:
    from types import TracebackType

    from lookout.monitor.config import BusConfig
    from lookout.monitor.metrics.prom import IngestMetrics

log = structlog.get_logger(__name__)
_READ_BURST = 256  # packets read per wake-up of the socket reader
_SUBACK_TIMEOUT_S = 600.0


class _LookoutClient(aiomqtt.Client):
    """aiomqtt client whose messages go to an IngestQueue, acked after processing."""

    def __init__(self, queue: IngestQueue, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ingest = queue
        self._paho: paho.Client = self._client
        self._paho.manual_ack_set(True)
        self._reader_fd = -1
        self._live = True
        self._delivered = 0
        # The reason for a disconnect is logged by the source; mark it retrieved here.
        self._disconnected.add_done_callback(_retrieve_exception)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        ack = None
        if message.qos > 0:
            mid, qos = message.mid, message.qos

            def ack() -> None:
                # After a reconnect the mid belongs to a new session: the broker redelivers.
                if self._live:
                    self._paho.ack(mid, qos)

        self._delivered += 1
        self._ingest.offer(Inbound(message.topic, bytes(message.payload), ack))

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)
        self._reader_fd = sock.fileno()
        # Replace aiomqtt's reader, which takes one packet per loop iteration, with one that
        # takes a burst, so the ingest task processes messages in chunks rather than one by
        # one. Scheduled after aiomqtt's own add_reader, so this one wins.
        self._loop.call_soon_threadsafe(self._loop.add_reader, self._reader_fd, self._read)

    def _read(self) -> None:
        paho_client = self._paho
        try:
            for _ in range(_READ_BURST):
                before = self._delivered
                rc = paho_client.loop_read()
                sock = paho_client.socket()
                if sock is not None and hasattr(sock, "pending") and sock.pending() > 0:
                    continue  # TLS: decrypted bytes wait in the SSL object, not the socket
                if rc != paho.MQTT_ERR_SUCCESS or self._delivered == before:
                    break  # nothing more to read now, or the link is gone
                if self._ingest.paused:
                    break
        except Exception as exc:
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)

    def pause_reading(self) -> None:
        if self._reader_fd >= 0:
            self._loop.remove_reader(self._reader_fd)

    def resume_reading(self) -> None:
        if self._reader_fd >= 0 and self._live:
            self._loop.add_reader(self._reader_fd, self._read)

    def retire(self) -> None:
        self._live = False

    async def wait_disconnected(self) -> None:
        await asyncio.wait([self._disconnected])


def _retrieve_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


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
        rng: random.Random | None = None,
    ) -> None:
        self._cfg = cfg
        self._queue = queue
        self._prom = prom
        self._rng = rng or random.Random()
        self.connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._client: _LookoutClient | None = None
        self._group: asyncio.TaskGroup | None = None
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
        info = client._paho.publish(topic, payload, qos=qos)
        return bool(info.rc == paho.MQTT_ERR_SUCCESS)

    def topics(self) -> list[str]:
        group = self._cfg.shared_group
        return [f"$share/{group}/{t}" if group else t for t in self._cfg.topics]

    def _new_client(self) -> _LookoutClient:
        cfg = self._cfg
        v5 = cfg.protocol == "5" or cfg.shared_group is not None
        kwargs: dict[str, Any] = {}
        if v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if cfg.persistent_session:
                props.SessionExpiryInterval = int(cfg.session_expiry_s)
            kwargs["properties"] = props
            kwargs["clean_start"] = not cfg.persistent_session
        else:
            kwargs["clean_session"] = not cfg.persistent_session
        return _LookoutClient(
            self._queue,
            cfg.host,
            cfg.port,
            username=cfg.username,
            password=cfg.password.get_secret_value() if cfg.password else None,
            identifier=cfg.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            keepalive=cfg.keepalive_s,
            timeout=10.0,
            tls_context=_tls_context(cfg),
            **kwargs,
        )

    async def __aenter__(self) -> MqttSource:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._group.create_task(self._run(), name="mqtt-source")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
        if self._group is not None:
            await self._group.__aexit__(exc_type, exc, tb)

    async def stop(self, drain_timeout_s: float = 3.0) -> None:
        """Stop reading, let the queue drain (acking each message), then disconnect."""
        if self._stopping.is_set():
            return
        self._pause()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.wait_idle(), timeout=drain_timeout_s)
        self._stopping.set()

    async def _run(self) -> None:
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
                    log.info("bus_connected", broker=where, topics=self.topics())
                    if self._queue.paused:
                        client.pause_reading()
                    await self._serve(client)
            except aiomqtt.MqttError as exc:
                client.retire()
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
                    await asyncio.wait_for(self._stopping.wait(), timeout=delay)
            finally:
                client.retire()
                self._client = None
        self._mark_down()

    async def _serve(self, client: _LookoutClient) -> None:
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
