"""Three `lookout run` processes as a user runs a cluster: one private Mosquitto, one PostgreSQL
database reached through a proxy the test can cut (a server restart as the nodes see it),
each node in the shared group with its own node.id, API port and local state."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.alerts.test_crash import ready, start
from tests.conftest import eventually, free_port
from tests.monitor.test_durability import publish_paced

ROLES = {"alerts", "judge", "retention", "references"}
APPS = ("shop", "search", "support")


class Node:
    def __init__(self, name: str, config: Path, api_port: int) -> None:
        self.name = name
        self.config = config
        self.api = f"http://127.0.0.1:{api_port}"
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        self.proc = await start(self.config)
        await eventually(lambda: ready(self.api), timeout_s=60)

    async def kill_9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int:
        if not self.running:
            return 0
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), 20)

    def rss_bytes(self) -> int:
        assert self.proc is not None
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        (kib,) = [line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:")]
        return int(kib) * 1024

    async def cluster(self) -> dict[str, Any]:
        async with httpx.AsyncClient(base_url=self.api, timeout=5) as http:
            response = await http.get("/api/v1/cluster")
            response.raise_for_status()
            body: dict[str, Any] = response.json()
            return body


def node_config(
    workdir: Path, name: str, *, root: str, broker_url: str, pg_url: str, extra: dict[str, Any]
) -> tuple[Path, int]:
    """A node's YAML: the shared group, record_sample_rate 1 (every record stored) and short
    cluster intervals so a failover is seen within seconds."""
    api_port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    settings: dict[str, Any] = {
        "node": {"id": f"{name}-{root}"},
        "bus": {
            "url": broker_url,
            "topics": [f"llm/records/{root}/#"],
            "shared_group": f"g{root}",
            "reconnect_min_s": 0.05,
            "reconnect_max_s": 0.5,
        },
        "store": {
            "url": pg_url,
            "local_url": f"sqlite:///{workdir / 'local.db'}",
            "record_sample_rate": 1.0,
        },
        "api": {"bind": f"127.0.0.1:{api_port}"},
        "detectors": {"enabled": False},
        "cluster": {
            "heartbeat_interval": "1s",
            "refresh_interval": "1s",
            "alive_within": "5s",
            "leader_retry_interval": "1s",
            "leader_check_interval": "1s",
        },
    }
    for key, value in extra.items():
        settings[key] = {**settings.get(key, {}), **value} if isinstance(value, dict) else value
    config = workdir / "lookout.yaml"
    config.write_text(yaml.safe_dump(settings))
    return config, api_port


def publish_records(port: int, topic_root: str, first: int, count: int) -> None:
    """Sequence-numbered records of three apps, one per message, at QoS 1, paced."""

    def messages() -> Iterator[tuple[str, str]]:
        for i in range(first, first + count):
            app = APPS[i % len(APPS)]
            body = {"id": f"seq-{i}", "app": app, "latency_ms": 100 + i % 900, "output_tokens": 5}
            yield f"llm/records/{topic_root}/{app}", json.dumps(body)

    publish_paced(port, messages(), wait_s=60)


async def role_holders(nodes: list[Node]) -> dict[str, str]:
    """Role -> node, as a running node's /api/v1/cluster reads it from the locks."""
    for node in nodes:
        if node.running:
            body = await node.cluster()
            return {role: n["node"] for n in body["nodes"] for role in n["roles"]}
    return {}
