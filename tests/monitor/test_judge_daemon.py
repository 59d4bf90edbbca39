"""The judge in the running daemon, end to end: records in over the API, `lookout judge run-now`
from the command line, a real local OpenAI-compatible server as the judge, verdicts on the
record, and a judge_pass_rate rule firing through the alerting pipeline when verdicts turn bad."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml
from typer.testing import CliRunner

from lookout.monitor.cli.main import app
from lookout.monitor.config import load_settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.storage import sqlite_path
from lookout.monitor.storage.sqlite_judge import SqliteJudgeStore as JudgeStore
from tests.alerts.test_engine import post
from tests.conftest import Receiver, running, sample_value
from tests.monitor.test_judge_client import OpenAIServer, server, tool_reply
from tests.stores import pg_database

__all__ = ["server"]


def grades(helpful: bool) -> Any:
    return tool_reply(
        [
            {
                "criterion": "helpfulness",
                "reasoning": "judged",
                "answer": helpful,
                "score": 0.9 if helpful else 0.1,
            }
        ]
    )


def config(
    tmp_path: Path, server: OpenAIServer, receiver: Receiver, store_url: str | None = None
) -> Path:
    body = {
        "bus": {
            "topics": [f"llm/records/{uuid.uuid4().hex[:10]}/#"],
            "client_id": f"lookout-test-{uuid.uuid4().hex[:8]}",
        },
        "store": {
            "url": store_url or f"sqlite:///{tmp_path}/lookout.db",
            "local_url": f"sqlite:///{tmp_path}/local.db",
            "record_sample_rate": 1.0,
        },
        "api": {"bind": "127.0.0.1:0"},
        "eval_interval": "100ms",
        "detectors": {"enabled": False},
        "judge": {
            "enabled": True,
            "model": "openai:judge-mini",
            "base_url": server.url,
            "api_key": "${JUDGE_KEY}",
            "criteria": ["helpfulness"],
            "schedule": {"interval": "1h"},
            "sample_size": 8,
        },
        "channels": {"hook": {"kind": "webhook", "url": receiver.url}},
        "rules": [
            {
                "name": "judge-says-unhelpful",
                "metric": "judge_pass_rate",
                "where": {"app": "bot"},
                "window": "5m",
                "op": "<",
                "threshold": 0.75,
                "channels": ["hook"],
                "summary": "pass rate {value:.0%} ({app})",
            }
        ],
    }
    path = tmp_path / "lookout.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


async def run_now(path: Path) -> str:
    """`lookout judge run-now --wait`, as a user types it, beside the running daemon."""
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["judge", "run-now", "--wait", "--timeout", "30", "-c", str(path)]
    )
    assert result.exit_code == 0, result.output
    return result.output


async def test_run_now_verdicts_and_a_pass_rate_rule_firing(
    tmp_path: Path, server: OpenAIServer, receiver: Receiver, monkeypatch: Any
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-judge-secret")
    path = config(tmp_path, server, receiver)
    async with running(Daemon(load_settings(path)), wait_bus=False) as d:
        await post(
            d,
            [
                {
                    "id": f"good-{i}",
                    "app": "bot",
                    "prompt": "How do I reset my password?",
                    "response": "Settings > Security > Reset.",
                }
                for i in range(4)
            ],
        )
        await d.store.flush()
        server.answers = [grades(True)] * 4
        output = await run_now(path)
        assert "run-now" in output and "done" in output
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            stored = (await http.get("/api/v1/records/good-2")).json()
            status = (await http.get("/api/v1/status")).json()
        [verdict] = stored["verdicts"]
        assert (verdict["criterion"], verdict["passed"], verdict["score"]) == (
            "helpfulness",
            True,
            0.9,
        )
        assert status["judge"]["last_run"]["judged"] == 4 and not receiver.requests
        assert {"metric": "judge_pass_rate", "app": "bot", "value": 1.0, "count": 4} in status[
            "judge"
        ]["series"]
        assert server.bodies[0]["model"] == "judge-mini"
        assert sample_value(d, "lookout_judge_tokens_total", {"direction": "input"}) == 4 * 120

        # The product gets worse: the next run's verdicts fail, the rule fires.
        await post(
            d,
            [
                {
                    "id": f"bad-{i}",
                    "app": "bot",
                    "prompt": "How do I reset my password?",
                    "response": "No idea.",
                }
                for i in range(8)
            ],
        )
        await d.store.flush()
        server.answers = [grades(False)] * 12
        await run_now(path)
        await asyncio.wait_for(receiver.received.wait(), 15)
    sent = json.loads(receiver.requests[0][1])
    [alert] = sent["alerts"]
    assert alert["status"] == "firing" and alert["labels"]["alertname"] == "judge-says-unhelpful"
    assert alert["annotations"]["summary"] == "pass rate 33% (bot)"  # 4 of 12 records pass
    async with JudgeStore(sqlite_path(load_settings(path).store.url)) as book:
        runs = await book.runs()
    assert [(r.trigger, r.judged) for r in runs] == [("run-now", 8), ("run-now", 4)]
    assert "sk-judge-secret" not in json.dumps(sent)


async def test_on_postgresql_the_judge_samples_the_shared_records_and_takes_run_now(
    tmp_path: Path, server: OpenAIServer, receiver: Receiver, monkeypatch: Any
) -> None:
    monkeypatch.setenv("JUDGE_KEY", "sk-judge-secret")
    with pg_database() as url:
        path = config(tmp_path, server, receiver, store_url=url)
        async with running(Daemon(load_settings(path)), wait_bus=False) as d:
            records: list[dict[str, object]] = [
                {"id": f"r-{i}", "app": "bot", "prompt": "Reset?", "response": "Settings."}
                for i in range(3)
            ]
            await post(d, records)
            await d.store.flush()
            server.answers = [grades(True)] * 3
            output = await run_now(path)  # the request goes through PostgreSQL
            assert "run-now" in output and "done" in output
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
                stored = (await http.get("/api/v1/records/r-1")).json()
                status = (await http.get("/api/v1/status")).json()
        assert [v["criterion"] for v in stored["verdicts"]] == ["helpfulness"]
        assert status["judge"]["last_run"]["judged"] == 3
        with psycopg.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT trigger, outcome, judged FROM judge_runs").fetchall()
        assert rows == [("run-now", "done", 3)]
    assert _local_runs(tmp_path / "local.db") == 0  # the node's own file holds none of it


def _local_runs(path: Path) -> int:
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(path)) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "judge_runs" not in tables:
            return 0
        (n,) = db.execute("SELECT COUNT(*) FROM judge_runs").fetchone()
        return int(n)


def test_a_judge_that_cannot_be_built_stops_the_start_with_one_clear_line(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    path = tmp_path / "lookout.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "store": {"url": f"sqlite:///{tmp_path}/lookout.db"},
                "api": {"bind": "127.0.0.1:0"},
                "bus": {"client_id": f"lookout-test-{uuid.uuid4().hex[:8]}", "topics": ["none/#"]},
                "judge": {"enabled": True, "model": "openai:gpt-4o-mini"},
            }
        )
    )
    # A process of its own: `run` configures logging for the process.
    result = subprocess.run(
        [sys.executable, "-m", "lookout", "run", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "error: judge.model 'openai:gpt-4o-mini'" in result.stderr.replace("\n", " ")
    assert "TaskGroup" not in result.stderr
