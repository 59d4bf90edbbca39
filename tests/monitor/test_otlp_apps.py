"""OTLP ingest end to end with the real instrumentation libraries.

An app using the `openai` client (or a LangChain chain) against a local OpenAI-compatible
server, instrumented in turn by each family and exporting with the OTLP/HTTP protobuf exporter
to a running daemon; then the same spans as OTLP JSON to another daemon. Each family runs in
its own process (tests/monitor/otlp_app.py): instrumentors patch the client globally.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
from asyncio.subprocess import PIPE, STDOUT
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.conftest import running, sample_value

ROOT = Path(__file__).resolve().parents[2]
FAMILIES = ["openai-v2", "openllmetry", "openinference", "openinference-langchain"]


def otlp_settings(settings_for: Callable[..., Settings], db: Path) -> Settings:
    return settings_for(
        otlp={"enabled": True, "bind": "127.0.0.1:0"},
        store={"url": f"sqlite:///{db}", "record_sample_rate": 1.0},
    )


async def run_app(family: str, endpoint: str, dump: Path) -> str:
    env = {
        **os.environ,
        # openai-v2 on the latest GenAI conventions: content as log records (EVENT_ONLY), so
        # the span/log correlation is exercised; the others capture content on spans.
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "EVENT_ONLY",
        "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
        "TRACELOOP_TRACE_CONTENT": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",
        "OTEL_BLRP_SCHEDULE_DELAY": "60000",
    }
    args = ["-m", "tests.monitor.otlp_app", family, endpoint, str(dump)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, *args, cwd=ROOT, env=env, stdout=PIPE, stderr=STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, out.decode()
    return out.decode()


def rows(db: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        found = conn.execute("SELECT * FROM records ORDER BY ts").fetchall()
    return [dict(r) for r in found]


def check_records(family: str, records: list[dict[str, Any]]) -> None:
    assert len(records) == 3, records  # plain, streaming, failing: nothing else is a call
    plain, streamed, failed = records
    for r in records:
        assert r["app"] == f"shop-{family}"
        assert r["provider"] == "openai"
        assert 0 < r["latency_ms"] < 30_000
    for r in (plain, streamed):
        assert r["model"].startswith("gpt-4o-mini")
        assert (r["status"], r["input_tokens"], r["output_tokens"]) == ("ok", 12, 5)
        assert r["prompt"] == "Where is my order?"
        assert r["response"] == "Your order shipped yesterday."
    assert streamed["latency_ms"] >= 50  # the server waits 50 ms before the first token
    if family in ("openllmetry", "openinference"):  # those that report the first token
        assert 50 <= streamed["ttft_ms"] <= streamed["latency_ms"]
    assert failed["status"] == "error"
    assert "BadRequestError" in failed["error"] or "400" in failed["error"]


@pytest.mark.parametrize("family", FAMILIES)
async def test_instrumented_app_exports_to_lookout(
    family: str, settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    db = tmp_path / "proto.db"
    dump = tmp_path / "spans.json"
    async with running(Daemon(otlp_settings(settings_for, db))) as d:
        assert d.otlp is not None
        await run_app(family, f"http://127.0.0.1:{d.otlp.port}", dump)
        await d.store.flush()
        assert sample_value(d, "lookout_otlp_spans_total", {"outcome": "record"}) == 3
    check_records(family, rows(db))
    if family == "openai-v2":  # its prompts and answers came as log records
        assert sample_value(d, "lookout_otlp_log_records_total", {"outcome": "correlated"}) >= 2

    json_db = tmp_path / "json.db"
    async with running(Daemon(otlp_settings(settings_for, json_db))) as d:
        assert d.otlp is not None
        async with httpx.AsyncClient() as http:
            r = await http.post(
                f"http://127.0.0.1:{d.otlp.port}/v1/traces",
                content=dump.read_bytes(),
                headers={"Content-Type": "application/json"},
            )
        assert r.status_code == 200 and r.json() == {}
        await d.store.flush()
    from_json = rows(json_db)
    if family != "openai-v2":  # its content travelled in log records, not in these spans
        check_records(family, from_json)
    proto_rows = rows(db)
    for a, b in zip(proto_rows, from_json, strict=True):
        for key in ("id", "app", "model", "latency_ms", "ttft_ms", "input_tokens", "status"):
            assert a[key] == b[key], key
    assert json.loads(proto_rows[0]["metadata"])["otel.span_id"] == proto_rows[0]["id"][33:]
