"""HTTP API: ingest, lookup, status, health, and the bearer token."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import httpx
import pytest

from lookout.detectors.embedders import Embedder
from lookout.monitor.config import EmbedderConfig, Settings
from lookout.monitor.daemon import Daemon
from tests.conftest import eventually, free_port, running, sample_value, status_of


def client(d: Daemon, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}", headers=headers)  # type: ignore[union-attr]


async def test_post_records_same_format_and_read_one_back(
    settings_for: Callable[..., Settings],
) -> None:
    async with running(Daemon(settings_for())) as d, client(d) as http:
        batch = [
            {
                "id": "h1",
                "app": "web",
                "model": "gpt-4o-mini",
                "prompt": "p",
                "response": "r",
                "latency_ms": 420,
                "metadata": {"tenant": "acme"},
            },
            {"id": "h2", "app": "web", "latency_ms": -1},
        ]
        r = await http.post("/api/v1/records", content=json.dumps(batch))
        assert r.status_code == 200
        body = r.json()
        assert body["accepted"] == 1
        assert body["rejected"][0]["reason"] == "negative_value"
        await d.store.flush()
        got = (await http.get("/api/v1/records/h1")).json()
        assert (got["app"], got["prompt"], got["response"], got["latency_ms"]) == (
            "web",
            "p",
            "r",
            420.0,
        )
        assert got["metadata"] == {"tenant": "acme"}
        assert (await http.get("/api/v1/records/nope")).status_code == 404
        bad = await http.post("/api/v1/records", content=b"{oops")
        assert bad.status_code == 400 and bad.json()["rejected"][0]["reason"] == "invalid_json"
        huge = await http.post("/api/v1/records", content=b"[" + b" " * (1024 * 1024) + b"]")
        assert huge.status_code == 413
        assert sample_value(d, "lookout_records_rejected_total", {"reason": "too_large"}) == 1
        status = (await http.get("/api/v1/status")).json()
        assert status["bus"]["connected"] is True
        web = next(s for s in status["series"] if s["app"] == "web" and s["model"] == "*")
        assert web["count"] == 1 and web["latency_p95"] == 0.42


async def test_token_protects_everything_but_health(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for(api={"bind": "127.0.0.1:0", "token": "sesame-open-up-now"})
    async with running(Daemon(settings)) as d:
        async with client(d) as anonymous:
            assert (await anonymous.get("/healthz")).status_code == 200
            assert (await anonymous.get("/readyz")).status_code == 200
            for path in ("/metrics", "/api/v1/status", "/api/v1/records/x"):
                assert (await anonymous.get(path)).status_code == 401
            assert (await anonymous.post("/api/v1/records", content=b"{}")).status_code == 401
        async with client(d, "wrong") as wrong:
            assert (await wrong.get("/api/v1/status")).status_code == 401
        async with client(d, "sesame-open-up-now") as ok:
            assert (await ok.get("/api/v1/status")).status_code == 200
            assert (await ok.post("/api/v1/records", content=b"{}")).json()["accepted"] == 1


async def test_embedded_broker_needs_nothing_else(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    port = free_port()
    settings = settings_for(bus={"url": f"mqtt://127.0.0.1:{port}", "embedded": True})
    async with running(Daemon(settings)) as d:
        async with aiomqtt.Client("127.0.0.1", port, identifier="app") as app:
            await app.publish(f"llm/records/{topic_root}", b'{"latency_ms": 3}', qos=1)
        labels = {"app": topic_root, "model": "unknown", "status": "ok"}
        await eventually(lambda: sample_value(d, "lookout_records_total", labels) == 1, d)


async def test_status_command_shows_a_running_daemons_series(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    async with running(
        Daemon(settings_for(api={"bind": "127.0.0.1:0", "token": "t0k-status-0123456"}))
    ) as d:
        async with client(d, "t0k-status-0123456") as http:
            body = {"app": "cli-app", "model": "gpt-4o-mini", "latency_ms": 1500, "prompt": "hi"}
            await http.post("/api/v1/records", content=json.dumps(body))
        assert d.detection is not None
        await asyncio.wait_for(d.detection.wait_idle(), 30)
        config = tmp_path / "status.yaml"
        config.write_text(f"api: {{bind: '127.0.0.1:{d.api.port}', token: t0k-status-0123456}}\n")  # type: ignore[union-attr]
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lookout",
            "status",
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode == 0
    assert "bus connected" in text
    assert "cli-app" in text and "1.500" in text
    assert "drift and out-of-distribution" in text and "building" in text  # its first text


def test_status_command_says_when_no_daemon_answers(tmp_path: Path) -> None:
    config = tmp_path / "status.yaml"
    config.write_text(f"api: {{bind: '127.0.0.1:{free_port()}'}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "lookout", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert "no daemon answering" in proc.stderr


async def test_records_posted_while_the_daemon_starts_are_refused_until_it_is_ready(
    settings_for: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's probes answer before the detectors are wired (a model may take seconds to
    load); the routes that need the services answer 503 and Retry-After until they are built:
    records taken then would skip them."""
    from lookout.monitor.detection.embedding import build_embedder as real_build

    loading = threading.Event()

    def slow_build(cfg: EmbedderConfig) -> Embedder:
        assert loading.wait(15)
        return real_build(cfg)

    monkeypatch.setattr("lookout.monitor.daemon.build_embedder", slow_build)
    d = Daemon(
        settings_for(
            detectors={"fields": ["prompt"], "reference": {"auto_size": 20}, "drift": {"window": 5}}
        )
    )
    stop = asyncio.Event()
    task = asyncio.create_task(d.run(stop))
    try:
        await eventually(lambda: d.api is not None and d.api.port is not None)
        async with client(d) as http:
            early = await http.post("/api/v1/records", content=b'{"app": "bot", "prompt": "hi"}')
            assert early.status_code == 503 and early.headers["Retry-After"] == "1"
            assert (await http.get("/api/v1/status")).status_code == 503  # not built yet
            assert (await http.get("/healthz")).status_code == 200
            readyz = await http.get("/readyz")
            assert readyz.status_code == 503 and readyz.json()["started"] is False
            loading.set()
            await asyncio.wait_for(d.ready.wait(), 15)
            later = await http.post("/api/v1/records", content=b'{"app": "bot", "prompt": "hi"}')
            assert later.status_code == 200 and later.json()["accepted"] == 1
        assert d.detection is not None
        await asyncio.wait_for(d.detection.wait_idle(), 15)
        assert [s["reference_pending"] for s in status_of(d)["detectors"]] == [1]
    finally:
        loading.set()
        stop.set()
        await asyncio.wait_for(task, 15)
