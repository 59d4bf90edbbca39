"""kill -9 between writing a notification and delivering it loses nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.conftest import Receiver, eventually, free_port


async def start(config: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "lookout",
        "run",
        "--config",
        str(config),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ},
    )


async def metric(api: str, name: str) -> float:
    """A sample's value, 0 if absent, -1 while the daemon does not answer."""
    try:
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"{api}/metrics", timeout=2)).text
    except httpx.HTTPError:
        return -1.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def write_config(tmp_path: Path, topic_root: str, api_port: int, **extra: Any) -> Path:
    """A daemon config of its own: topic tree, client id, SQLite file and API port."""
    config = tmp_path / "lookout.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "bus": {
                    "topics": [f"llm/records/{topic_root}/#"],
                    "client_id": f"crash-{topic_root}",
                },
                "store": {"url": f"sqlite:///{tmp_path}/lookout.db"},
                "api": {"bind": f"127.0.0.1:{api_port}"},
                "eval_interval": "100ms",
                **extra,
            }
        )
    )
    return config


async def ready(api: str) -> bool:
    """/readyz says 200: started (records are taken), bus connected, store writable."""
    try:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{api}/readyz", timeout=2)).status_code == 200
    except httpx.HTTPError:
        return False


async def test_kill_9_before_delivery_then_restart_delivers(
    tmp_path: Path, topic_root: str
) -> None:
    hook_port, api_port = free_port(), free_port()
    api = f"http://127.0.0.1:{api_port}"
    config = write_config(
        tmp_path,
        topic_root,
        api_port,
        channels={"hook": {"kind": "webhook", "url": f"http://127.0.0.1:{hook_port}/hook"}},
        rules=[
            {
                "name": "errors",
                "metric": "error_rate",
                "where": {"app": "bot"},
                "threshold": 0.5,
                "channels": ["hook"],
            }
        ],
    )
    first = await start(config)
    try:
        await eventually(lambda: ready(api), timeout_s=30)
        async with httpx.AsyncClient() as http:
            await http.post(f"{api}/api/v1/records", json={"app": "bot", "error": "boom"})

        async def pending() -> bool:
            # Written to the outbox, and a first try refused: nothing listens on the hook yet.
            return (
                await metric(api, "lookout_outbox_depth") == 1
                and await metric(api, 'lookout_notifications_total{channel="hook",outcome="retry"}')
                >= 1
            )

        await eventually(pending, timeout_s=30)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert first.returncode == -9

    receiver = Receiver(port=hook_port)
    await receiver.start()
    second = await start(config)
    try:
        await asyncio.wait_for(receiver.received.wait(), 30)
    finally:
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 15)
        await receiver.stop()
    headers, body = receiver.requests[0]
    assert b'"status":"firing"' in body and headers["Idempotency-Key"]
