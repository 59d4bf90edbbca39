"""The one place that knows aiomqtt's internals: a client that acks manually after processing.

aiomqtt owns the connection (connect off the loop, CONNACK/SUBACK/disconnect bookkeeping, TLS,
auth, MQTT 5 properties, the write side of the socket and paho's housekeeping). Two of its
behaviours do not fit ingest: its message iterator wraps every message in an asyncio task (most
of its per-message cost, PERF_NOTES) and its queue drops when full. So `ManualAckClient` takes
messages straight from paho's `on_message` callback into our bounded `IngestQueue`, acks each
one through paho's `ack(mid, qos)` once the queue has processed it, and swaps aiomqtt's socket
reader for one that reads in bursts and can be paused (back-pressure).

That needs five aiomqtt internals: `_client` (the paho client), `_loop`, `_disconnected`, and
the `_on_message` / `_on_socket_open` callbacks it registers with paho. `check_aiomqtt_internals`
verifies them on every client built, so an aiomqtt release that changes them fails loudly,
naming what moved, instead of silently losing acks; tests/monitor/test_aiomqtt_contract.py runs
it without a broker, and pyproject.toml pins aiomqtt to the minor release it was checked on.

paho decodes every MQTT 5 PUBLISH into a `Properties` object, which costs ~40 us a message
even when the packet carries none (docs/benchmarks.md: 53 us against 10 us on 3.1.1), more
than all of lookout's work on a single record. So PUBLISH packets go through `parse_publish`
first: QoS 0 and 1 messages without properties (what publishers send) are taken straight to
the queue; anything else (QoS 2, properties, a topic alias, a malformed packet) goes to
paho's own handler, unchanged. That needs two paho internals, the packet being read
(`_in_packet`) and the `_handle_publish` it dispatches PUBLISH to; they are checked the same
way and paho-mqtt is pinned to the minor release they were checked on.

paho reads a packet in three or more `recv` calls (its first byte, each byte of its length,
then the rest), one system call each: with its per-wake-up reads that was the largest part of
the kernel's share of a message's cost. `_sock_recv` (paho's one reading method, also
checked) is replaced by one that takes up to 64 KB a call and serves paho's small reads from
that buffer; the socket reader keeps reading while whole packets wait in the buffer, since the
socket will not wake it for bytes it has already given up.

Acks go out the same way, in bulk: paho's `ack` queues each PUBACK as a packet of its own, logs
it, registers the socket for writing and later sends it in a `send` of its own: four bytes a
system call. A committed group's acks are collected instead and handed to paho's
`_packet_queue` (checked likewise) as one buffer of PUBACKs, in the order the messages came,
at the end of the loop iteration that committed them.
"""

from __future__ import annotations

import asyncio
import inspect
import struct
from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiomqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import MQTTErrorCode

from lookout.errors import LookoutError
from lookout.monitor.ingest.queue import Inbound, IngestQueue

_READ_BURST = 256  # packets read per wake-up of the socket reader
_RECV_BYTES = 65536  # bytes asked of the socket per read
# After a burst of fewer packets than this the reader rests before it reads again, so that a
# node not kept busy wakes up once per few ms for many messages, not once for each (each
# wake-up costs the event loop, the ingest task and the socket a round of their own).
_SMALL_BURST = 64
_REST_S = 0.02
_SOCKET_OPEN_PARAMS = ["self", "client", "userdata", "sock"]
_PUBACK = struct.Struct("!BBH")  # fixed header (PUBACK, remaining length 2) and packet id
_QOS_MASK = 0x06


class AiomqttContractError(LookoutError):
    """The installed aiomqtt no longer has an internal this module relies on."""


def check_aiomqtt_internals(client: aiomqtt.Client) -> None:
    """Raise AiomqttContractError naming the first aiomqtt internal that is not as expected."""
    expected: list[tuple[str, type]] = [
        ("_client", paho.Client),
        ("_loop", asyncio.AbstractEventLoop),
        ("_disconnected", asyncio.Future),
    ]
    for name, kind in expected:
        if not isinstance(getattr(client, name, None), kind):
            raise AiomqttContractError(f"aiomqtt.Client.{name} is no longer a {kind.__name__}")
    paho_client: paho.Client = client._client
    callbacks = (
        ("on_message", "_on_message"),
        ("on_socket_open", "_on_socket_open"),
        ("on_socket_close", "_on_socket_close"),
    )
    for callback, method in callbacks:
        registered = getattr(getattr(paho_client, callback, None), "__func__", None)
        if registered is None or registered is not getattr(type(client), method, None):
            raise AiomqttContractError(
                f"aiomqtt.Client no longer registers self.{method} as paho's {callback}"
            )
    for method in ("_handle_publish", "_sock_recv", "_packet_queue"):
        if not callable(getattr(paho_client, method, None)):
            raise AiomqttContractError(f"paho.Client.{method} is gone")
    if not isinstance(getattr(paho_client, "_in_packet", None), dict):
        raise AiomqttContractError("paho.Client._in_packet is no longer a dict")
    base_socket_open = getattr(aiomqtt.Client, "_on_socket_open", None)
    if base_socket_open is None:
        raise AiomqttContractError("aiomqtt.Client._on_socket_open is gone")
    params = list(inspect.signature(base_socket_open).parameters)
    if params != _SOCKET_OPEN_PARAMS:
        raise AiomqttContractError(f"aiomqtt.Client._on_socket_open now takes {params}")


class ManualAckClient(aiomqtt.Client):
    """aiomqtt client whose messages go to an IngestQueue, acked after processing."""

    def __init__(
        self, queue: IngestQueue, *args: Any, inflight_window: int = 20, **kwargs: Any
    ) -> None:
        """`inflight_window`: unacknowledged QoS 1 messages the broker sends before it waits."""
        super().__init__(*args, **kwargs)
        check_aiomqtt_internals(self)
        self._ingest = queue
        self._paho: paho.Client = self._client
        self._paho.manual_ack_set(True)
        # An instance attribute: paho's `_packet_handle` calls self._handle_publish().
        self._paho_handle_publish = self._paho._handle_publish
        self._paho._handle_publish = self._handle_publish  # type: ignore[method-assign]
        self._paho_sock_recv = self._paho._sock_recv
        self._paho._sock_recv = self._sock_recv  # type: ignore[method-assign]
        self._acks: list[int] = []  # packet ids of QoS 1 messages to ack, in arrival order
        self._received = b""  # bytes read from the socket; paho has taken [:_taken]
        self._taken = 0
        self.fast_path_messages = 0  # taken by parse_publish, not paho (tests read it)
        self._reader_fd = -1
        self._live = True
        self._paused = False
        self._rest: asyncio.TimerHandle | None = None
        self._window = inflight_window
        self._unacked = 0  # QoS 1 and 2 messages delivered to the queue, not acked yet
        self._delivered = 0
        # The reason for a disconnect is logged by the source; mark it retrieved here.
        self._disconnected.add_done_callback(_retrieve_exception)

    def publish_nowait(self, topic: str, payload: bytes, qos: int) -> bool:
        """Hand a message to paho without waiting for the broker; False if paho refused it."""
        return bool(self._paho.publish(topic, payload, qos=qos).rc == paho.MQTT_ERR_SUCCESS)

    def _ack_after_processing(self, mid: int, qos: int) -> Callable[[], None]:
        if qos == 1:

            def puback() -> None:
                self._unacked -= 1
                # After a reconnect the mid belongs to a new session: the broker redelivers.
                if self._live:
                    if not self._acks:
                        self._loop.call_soon(self._send_acks)
                    self._acks.append(mid)

            return puback

        def ack() -> None:
            self._unacked -= 1
            if self._live:
                self._paho.ack(mid, qos)

        return ack

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._send_acks()  # acks still collected go out before the DISCONNECT
        await super().__aexit__(exc_type, exc, tb)

    def _send_acks(self) -> None:
        mids, self._acks = self._acks, []
        if self._live and mids:
            pack = _PUBACK.pack
            acks = b"".join([pack(paho.PUBACK, 2, mid) for mid in mids])
            self._paho._packet_queue(paho.PUBACK, acks, 0, 0)

    def _handle_publish(self) -> MQTTErrorCode:
        packet = self._paho._in_packet
        parsed = parse_publish(
            packet["command"], packet["packet"], v5=self._paho._protocol == paho.MQTTv5
        )
        if parsed is None:
            return self._paho_handle_publish()
        topic, payload, qos, mid = parsed
        ack = self._ack_after_processing(mid, qos) if qos else None
        self._unacked += qos > 0
        self._delivered += 1
        self.fast_path_messages += 1
        self._ingest.offer(Inbound(topic, payload, ack))
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        ack = self._ack_after_processing(message.mid, message.qos) if message.qos > 0 else None
        self._unacked += message.qos > 0
        self._delivered += 1
        self._ingest.offer(Inbound(message.topic, bytes(message.payload), ack))

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        # No rest may end by registering a reader on a closed (or reused) descriptor.
        self._cancel_rest()
        self._reader_fd = -1
        super()._on_socket_close(client, userdata, sock)

    def _sock_recv(self, bufsize: int) -> bytes:
        received, taken = self._received, self._taken
        if taken >= len(received):
            # paho's own read: its errors (BlockingIOError when nothing waits) are paho's to see
            received = self._paho_sock_recv(_RECV_BYTES)
            if not received:
                return received  # the connection is closed
            self._received, taken = received, 0
        self._taken = taken + bufsize
        return received[taken : taken + bufsize]

    def _buffered(self) -> bool:
        return self._taken < len(self._received)

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        super()._on_socket_open(client, userdata, sock)
        self._received, self._taken = b"", 0  # a new connection: nothing of the old one
        self._reader_fd = sock.fileno()
        # Replace aiomqtt's reader, which takes one packet per loop iteration, with one that
        # takes a burst, so the ingest task processes messages in chunks rather than one by
        # one. Scheduled after aiomqtt's own add_reader, so this one wins.
        self._loop.call_soon_threadsafe(self._loop.add_reader, self._reader_fd, self._read)

    def _read(self) -> None:
        paho_client = self._paho
        start = self._delivered
        try:
            for _ in range(_READ_BURST):
                before = self._delivered
                rc = paho_client.loop_read()
                if rc != paho.MQTT_ERR_SUCCESS or self._ingest.paused:
                    return  # the link is gone, or the queue is full
                if self._buffered():
                    continue  # packets wait in our buffer, which the socket cannot signal
                sock = paho_client.socket()
                if sock is not None and hasattr(sock, "pending") and sock.pending() > 0:
                    continue  # TLS: decrypted bytes wait in the SSL object, not the socket
                if self._delivered == before:
                    break  # nothing more to read now
            else:
                if self._buffered():
                    self._loop.call_soon(self._read)  # the burst is over, not the buffer
                return
        except Exception as exc:
            if not self._disconnected.done():
                self._disconnected.set_exception(exc)
            return
        if self._should_rest(self._delivered - start):
            # Drained after a few messages: let more gather. The rest ends with the reader
            # registered, so an idle link costs no wake-ups, and what came meanwhile is read
            # at once (the socket is readable).
            self._loop.remove_reader(self._reader_fd)
            self._rest = self._loop.call_later(_REST_S, self._end_rest)

    def _should_rest(self, burst: int) -> bool:
        # Only while the broker can send a burst's worth more before it waits for acks: with
        # a small in-flight window (MQTT 3.1.1's 20) a rest would cap the rate at one window
        # per rest, so the reader never rests there.
        return (
            0 < burst < _SMALL_BURST
            and self._window - self._unacked > _SMALL_BURST
            and self._reading()
        )

    def _reading(self) -> bool:
        """Whether the socket reader should be registered: a live, open link, not paused."""
        return self._live and not self._paused and self._reader_fd >= 0

    def _end_rest(self) -> None:
        self._rest = None
        if self._reading():
            self._loop.add_reader(self._reader_fd, self._read)

    def _cancel_rest(self) -> None:
        if self._rest is not None:
            self._rest.cancel()
            self._rest = None

    def pause_reading(self) -> None:
        self._paused = True
        self._cancel_rest()
        if self._reader_fd >= 0:
            self._loop.remove_reader(self._reader_fd)

    def resume_reading(self) -> None:
        self._paused = False
        if self._reading() and self._rest is None:
            self._loop.add_reader(self._reader_fd, self._read)
            if self._buffered():
                self._loop.call_soon(self._read)

    def retire(self) -> None:
        """Stop acking: the session these mids belong to is gone."""
        self._live = False
        self._cancel_rest()

    async def wait_disconnected(self) -> None:
        await asyncio.wait([self._disconnected])


def parse_publish(
    header: int, body: bytes | bytearray, *, v5: bool
) -> tuple[str, bytes, int, int] | None:
    """(topic, payload, qos, mid) of a QoS 0/1 PUBLISH without properties; None for paho.

    `header` is the fixed header's first byte, `body` what follows the remaining length.
    """
    qos = (header & _QOS_MASK) >> 1
    if qos > 1:
        return None
    try:
        end = 2 + ((body[0] << 8) | body[1])
        if end > len(body):
            return None
        mid = 0
        pos = end
        if qos:
            mid = (body[pos] << 8) | body[pos + 1]
            pos += 2
        if v5:
            if body[pos] != 0:
                return None  # properties (a topic alias among them): paho decodes them
            pos += 1
        topic = body[2:end].decode()
    except (IndexError, UnicodeDecodeError):
        return None  # paho reports the malformed packet its own way
    if not topic or (qos and mid == 0):
        return None
    return topic, bytes(memoryview(body)[pos:]), qos, mid


def _retrieve_exception(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
