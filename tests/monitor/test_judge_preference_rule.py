"""Shadow pairs in the running daemon, end to end: production and shadow records in over the
API, `lookout judge run-now`, a real local OpenAI-compatible server as the judge, and a rule
on judge_preference notifying a real local webhook; the figures in /metrics, /api/v1/status,
the record's view and `lookout status`."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console

from lookout.monitor.cli.status import print_status
from lookout.monitor.config import load_settings
from lookout.monitor.daemon import Daemon
from tests.alerts.test_engine import post
from tests.conftest import Receiver, running
from tests.monitor.test_judge_client import OpenAIServer, server
from tests.monitor.test_judge_daemon import config as judge_daemon_config
from tests.monitor.test_judge_daemon import run_now
from tests.monitor.test_judge_pairwise import pairwise_bodies, prefers

__all__ = ["server"]


def config(tmp_path: Path, server: OpenAIServer, receiver: Receiver) -> Path:
    """test_judge_daemon's daemon, with a rule on the shadow model's preference instead."""
    path = judge_daemon_config(tmp_path, server, receiver)
    body = yaml.safe_load(path.read_text())
    body["rules"] = [
        {
            "name": "shadow-is-better",
            "metric": "judge_preference",
            "where": {"app": "bot", "shadow_model": "m-new"},
            "window": "5m",
            "op": ">",
            "threshold": 0.5,
            "min_samples": 3,
            "channels": ["hook"],
            "summary": "{shadow_model} preferred over {model}: {value:+.2f}",
        }
    ]
    path.write_text(yaml.safe_dump(body))
    return path


def records() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(4):
        question = {"app": "bot", "prompt": "How do I reset my password?"}
        out.append({"id": f"p-{i}", "model": "m-old", "response": "No idea.", **question})
        out.append(
            {
                "id": f"s-{i}",
                "model": "m-new",
                "response": "Open Settings > Reset password.",
                "metadata": {"shadow_of": f"p-{i}", "reference": "Settings > Reset password."},
                **question,
            }
        )
    return out


async def test_a_preference_rule_notifies_a_webhook(
    tmp_path: Path, server: OpenAIServer, receiver: Receiver, monkeypatch: Any
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    path = config(tmp_path, server, receiver)
    server.answers = [prefers("Settings")] * 40
    async with running(Daemon(load_settings(path)), wait_bus=False) as d:
        await post(d, records())
        await d.store.flush()
        await run_now(path)
        await asyncio.wait_for(receiver.received.wait(), 15)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            status = (await http.get("/api/v1/status")).json()
            shadow = (await http.get("/api/v1/records/s-2")).json()
            metrics = (await http.get("/metrics")).text
    assert len(pairwise_bodies(server)) == 8
    sent = json.loads(receiver.requests[0][1])
    [alert] = sent["alerts"]
    assert alert["labels"]["alertname"] == "shadow-is-better"
    assert alert["annotations"]["summary"] == "m-new preferred over m-old: +1.00"
    series = status["judge"]["series"]
    preference = {"app": "bot", "model": "m-old", "shadow_model": "m-new", "value": 1.0, "count": 4}
    assert {"metric": "judge_preference", **preference} in series
    similar = {"app": "bot", "model": "m-new", "method": "string", "count": 4}
    assert any(p.items() >= similar.items() for p in series)
    [pair] = shadow["evaluations"]["pairs"]
    assert (pair["production_id"], pair["outcome"]) == ("p-2", "shadow")
    assert shadow["evaluations"]["reference"]["embedding_similarity"] > 0.5
    line = 'lookout_judge_preference{app="bot",model="m-old",shadow_model="m-new"} 1.0'
    assert line in metrics
    out = io.StringIO()
    print_status(Console(file=out, width=200), status)
    assert "judge preference (shadow over production): bot: m-new over m-old +1.00 of 4" in (
        out.getvalue()
    )
