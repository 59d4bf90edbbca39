"""Shared fixtures: the real Mosquitto on loopback, private brokers, a running daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.stores import BACKENDS, StoreDb, store_db_at

# Real data for the detector tests: CLINC150, shipped in tests/data (CC BY 3.0, licence beside
# it), or wherever LOOKOUT_CLINC150 points.
CLINC150 = Path(
    os.environ.get(
        "LOOKOUT_CLINC150",
        Path(__file__).resolve().parent / "data" / "clinc150" / "clinc150.jsonl",
    )
)

SYSTEM_BROKER = ("127.0.0.1", 1883)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    """Block until something accepts on 127.0.0.1:port (broker start-up)."""
    import time

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listening on port {port}")


def mosquitto_listener(port: int) -> str:
    """Config lines for a loopback listener; as root, stay root to read the test's files."""
    lines = f"listener {port} 127.0.0.1\n"
    if os.geteuid() == 0:
        lines += "user root\n"
    return lines


def start_mosquitto(conf: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([binary, "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


class PrivateBroker:
    """A Mosquitto of the test's own, so it can be stopped and restarted.

    Configured as docs/deploy.md recommends: persistence and a queue limit that loses nothing.
    """

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(
            mosquitto_listener(self.port) + "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "max_queued_messages 0\n"
            "max_inflight_messages 100\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = start_mosquitto(self.conf, self.port)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(params=BACKENDS)
def store_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreDb]:
    """The main store on each backend in turn: SQLite, and PostgreSQL on its own database."""
    with store_db_at(request.param, tmp_path) as db:
        yield db


@pytest.fixture
def topic_root() -> str:
    """A topic tree no other test uses: llm/records/<unique app>."""
    return f"t{uuid.uuid4().hex[:10]}"


def make_settings(tmp_path: Path, topic_app: str, **overrides: Any) -> Settings:
    bus = {
        "url": "mqtt://127.0.0.1:1883",
        "topics": [f"llm/records/{topic_app}/#"],
        # The test's own feedback tree too: a persistent session on llm/feedback/# would keep
        # every other test's feedback queued at the shared broker.
        "feedback_topics": [f"llm/feedback/{topic_app}/#"],
        "client_id": f"lookout-test-{uuid.uuid4().hex[:8]}",
        "reconnect_min_s": 0.05,
        "reconnect_max_s": 0.5,
    }
    bus.update(overrides.pop("bus", {}))
    store = {"url": f"sqlite:///{tmp_path}/lookout.db", "record_sample_rate": 1.0}
    store.update(overrides.pop("store", {}))
    api = {"bind": "127.0.0.1:0"}
    api.update(overrides.pop("api", {}))
    return Settings.model_validate({"bus": bus, "store": store, "api": api, **overrides})


@pytest.fixture
def settings_for(tmp_path: Path, topic_root: str) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        return make_settings(tmp_path, topic_root, **overrides)

    return build


@contextlib.asynccontextmanager
async def running(daemon: Daemon, *, wait_bus: bool = True) -> AsyncIterator[Daemon]:
    stop = asyncio.Event()
    task = asyncio.create_task(daemon.run(stop))
    try:
        ready = asyncio.ensure_future(daemon.ready.wait())
        await asyncio.wait([ready, task], timeout=15, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        if wait_bus:
            await asyncio.wait_for(daemon.source.connected.wait(), 15)
        yield daemon
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


async def eventually(
    check: Callable[[], bool] | Callable[[], Awaitable[bool]],
    daemon: Daemon | None = None,
    timeout_s: float = 15.0,
) -> None:
    """Await until `check()` holds, re-checking after each processed chunk (no fixed sleeps)."""

    async def loop() -> None:
        while True:
            result = check()
            if not isinstance(result, bool):
                result = await result
            if result:
                return
            if daemon is not None:
                await daemon.queue.wait_progress()
            else:
                await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout_s)


async def publish(payloads: list[bytes], topic: str, port: int = 1883, qos: int = 1) -> None:
    async with aiomqtt.Client("127.0.0.1", port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as c:
        for payload in payloads:
            await c.publish(topic, payload, qos=qos)


def status_of(daemon: Daemon) -> dict[str, Any]:
    """What `/api/v1/status` answers, read in process."""
    assert daemon.views is not None
    result: dict[str, Any] = daemon.views.status().model_dump(mode="json")
    return result


def sample_value(daemon: Daemon, name: str, labels: dict[str, str] | None = None) -> float:
    value = daemon.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


@pytest.fixture(autouse=True)
def _no_systemd_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LOOKOUT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


class Receiver:
    """A real HTTP server on loopback that records what it is sent and answers from a script.

    `script` answers in order, then 200 "ok"; `respond` (if set) answers instead, from the path
    and body; `hold` (if set) keeps each answer back until it is set.
    """

    def __init__(self, port: int = 0) -> None:
        self.port = port
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.paths: list[str] = []
        self.script: list[tuple[int, dict[str, str]]] = []
        self.respond: Callable[[str, bytes], tuple[int, dict[str, str], str]] | None = None
        self.hold: asyncio.Event | None = None
        self.received = asyncio.Event()
        self.arrived = asyncio.Event()  # set when a request arrives, before any hold
        self.url = ""
        self.base_url = ""
        self._runner: Any = None

    async def start(self) -> None:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            body = await request.read()
            self.arrived.set()
            if self.hold is not None:
                await self.hold.wait()
            self.requests.append((dict(request.headers), body))
            self.paths.append(request.path)
            self.received.set()
            if self.respond is not None:
                status, headers, text = self.respond(request.path, body)
            else:
                status, headers = self.script.pop(0) if self.script else (200, {})
                text = "ok"
            return web.Response(status=status, headers=headers, text=text)

        app = web.Application()
        app.router.add_post("/{tail:.*}", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.base_url = f"http://127.0.0.1:{port}"
        self.url = f"{self.base_url}/hook"

    async def stop(self) -> None:
        await self._runner.cleanup()


@contextlib.asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """Serve an aiohttp application on a free loopback port; yields its base URL."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()
