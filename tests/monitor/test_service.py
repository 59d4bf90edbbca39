"""`lookout run` as systemd runs it: sd_notify on a real socket, SIGTERM drains and flushes."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as paho
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import free_port


def write_config(tmp_path: Path, topic_root: str, **store: object) -> tuple[Path, int]:
    port = free_port()
    config = {
        "bus": {"topics": [f"llm/records/{topic_root}/#"], "client_id": f"svc-{topic_root}"},
        "store": {"url": f"sqlite:///{tmp_path}/lookout.db", "record_sample_rate": 1.0, **store},
        "api": {"bind": f"127.0.0.1:{port}"},
    }
    path = tmp_path / "lookout.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, port


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(20)
    yield sock
    sock.close()


def start(config: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "lookout", "run", "--config", str(config)],
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def wait_ready(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError("daemon did not become ready")


def test_ready_and_watchdog_arrive_on_a_real_notify_socket(
    tmp_path: Path, topic_root: str, notify_socket: socket.socket
) -> None:
    config, _ = write_config(tmp_path, topic_root)
    proc = start(
        config,
        {"NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "400000"},
    )
    try:
        seen: list[str] = []
        while not ({"READY=1", "WATCHDOG=1"} <= set(seen)):
            seen.extend(notify_socket.recv(4096).decode().splitlines())
        # The watchdog keeps pinging at half its interval while the loop is alive.
        pings = 0
        while pings < 3:
            pings += notify_socket.recv(4096).decode().splitlines().count("WATCHDOG=1")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
    assert proc.returncode == 0
    assert "STOPPING=1" in notify_socket.recv(4096).decode()


def test_sigterm_drains_and_flushes_the_store_within_5_s(tmp_path: Path, topic_root: str) -> None:
    # A flush interval far longer than the test: only the shutdown flush can write the rows.
    config, port = write_config(tmp_path, topic_root, flush_interval_s=3600)
    proc = start(config)
    try:
        wait_ready(port, proc)
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{topic_root}")
        client.connect("127.0.0.1", 1883)
        client.loop_start()
        batch = [{"id": f"r{i}", "latency_ms": i} for i in range(200)]
        info = client.publish(f"llm/records/{topic_root}", json.dumps(batch), qos=1)
        info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        status = {}
        end = time.monotonic() + 20
        while time.monotonic() < end:
            status = httpx.get(f"http://127.0.0.1:{port}/api/v1/status").json()
            if any(s["count"] == 200 for s in status["series"]):
                break
            time.sleep(0.05)
        assert any(s["count"] == 200 for s in status["series"]), status
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        assert time.monotonic() - started < 5.0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    out = proc.stdout.read().decode() if proc.stdout else ""
    events = [json.loads(line)["event"] for line in out.splitlines() if line.startswith("{")]
    assert events.index("lookout_stopping") < events.index("lookout_stopped")
    with sqlite3.connect(tmp_path / "lookout.db") as db:
        assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 200
