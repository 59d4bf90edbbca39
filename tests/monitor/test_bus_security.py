"""Username/password and TLS to the broker, against private Mosquitto instances."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.conftest import (
    eventually,
    free_port,
    mosquitto_listener,
    running,
    sample_value,
    start_mosquitto,
)


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    passwords = tmp_path / "passwd"
    subprocess.run(
        ["mosquitto_passwd", "-c", "-b", str(passwords), "lookout", "s3cret"],
        check=True,
        capture_output=True,
    )
    conf = tmp_path / "auth.conf"
    conf.write_text(
        mosquitto_listener(port) + f"allow_anonymous false\npassword_file {passwords}\n"
    )
    proc = start_mosquitto(conf, port)
    yield port
    proc.terminate()
    proc.wait(10)


def make_certs(d: Path) -> None:
    def sh(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    sh(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    )
    sh(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    )
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    sh(
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.pem",
    )


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    make_certs(tmp_path)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(
        mosquitto_listener(port) + "allow_anonymous true\n"
        f"cafile {tmp_path}/ca.pem\ncertfile {tmp_path}/server.pem\nkeyfile {tmp_path}/server.key\n"
    )
    proc = start_mosquitto(conf, port)
    yield port, tmp_path / "ca.pem"
    proc.terminate()
    proc.wait(10)


async def test_username_and_password(
    auth_broker: int, settings_for: Callable[..., Settings], topic_root: str
) -> None:
    url = f"mqtt://127.0.0.1:{auth_broker}"
    wrong = settings_for(bus={"url": url, "username": "lookout", "password": "nope"})
    async with running(Daemon(wrong), wait_bus=False) as d:
        await eventually(lambda: sample_value(d, "lookout_bus_reconnects_total") >= 2)
        assert not d.source.connected.is_set()
    right = settings_for(bus={"url": url, "username": "lookout", "password": "s3cret"})
    async with running(Daemon(right)) as d:
        async with aiomqtt.Client(
            "127.0.0.1", auth_broker, username="lookout", password="s3cret", identifier="app"
        ) as app:
            await app.publish(f"llm/records/{topic_root}", b'{"latency_ms": 1}', qos=1)
        labels = {"app": topic_root, "model": "unknown", "status": "ok"}
        await eventually(lambda: sample_value(d, "lookout_records_total", labels) == 1, d)


async def test_tls_with_a_private_ca(
    tls_broker: tuple[int, Path], settings_for: Callable[..., Settings], topic_root: str
) -> None:
    port, ca = tls_broker
    untrusted = settings_for(bus={"url": f"mqtts://localhost:{port}"})
    async with running(Daemon(untrusted), wait_bus=False) as d:
        await eventually(lambda: sample_value(d, "lookout_bus_reconnects_total") >= 2)
        assert not d.source.connected.is_set()
    trusted = settings_for(bus={"url": f"mqtts://localhost:{port}", "ca_file": str(ca)})
    async with running(Daemon(trusted)) as d:
        context = ssl.create_default_context(cafile=str(ca))
        async with aiomqtt.Client(
            "localhost", port, tls_context=context, identifier=f"app-{uuid.uuid4().hex[:6]}"
        ) as app:
            await app.publish(f"llm/records/{topic_root}", b'{"latency_ms": 1}', qos=1)
        labels = {"app": topic_root, "model": "unknown", "status": "ok"}
        await eventually(lambda: sample_value(d, "lookout_records_total", labels) == 1, d)


async def test_a_password_in_bus_url_is_used_and_never_logged(
    auth_broker: int, tmp_path: Path
) -> None:
    """`mqtt://user:PASS@host` once connected anonymously and logged the password."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"bus: {{url: 'mqtt://lookout:s3cret@127.0.0.1:{auth_broker}', topics: [none/#],"
        f" client_id: lookout-{uuid.uuid4().hex[:8]}}}\n"
        f"store: {{url: 'sqlite:///{tmp_path}/lookout.db'}}\n"
        f"api: {{bind: '127.0.0.1:{free_port()}'}}\n"
        "detectors: {enabled: false}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lookout",
        "run",
        "-c",
        str(config),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        while not any('"bus_connected"' in line for line in lines):
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "".join(lines)
            lines.append(line)
    finally:
        proc.terminate()
        rest, _ = await asyncio.wait_for(proc.communicate(), 30)
    logged = "".join(lines) + rest.decode()
    assert "s3cret" not in logged
    started = next(json.loads(line) for line in lines if '"lookout_started"' in line)
    assert started["bus"] == f"mqtt://127.0.0.1:{auth_broker}"
