"""The first run from the command line: version, checking a config without its secrets, the
messages a mistake gets, and `lookout status` in an 80-column terminal."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from lookout import __version__
from lookout.errors import ConfigError
from lookout.monitor.config import load_settings
from tests.conftest import serving

CONFIGS = Path(__file__).parents[2] / "configs"


def lookout(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lookout", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def test_version() -> None:
    out = lookout("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"lookout {__version__}"


def test_check_config_of_the_example_without_production_secrets() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("SLACK_WEBHOOK_URL", "HOOK_SECRET")}
    out = lookout("check-config", str(CONFIGS / "full.yaml"), env=env)
    assert out.returncode == 0, out.stderr
    assert (
        "warning: channels.oncall-slack.webhook_url: environment variable SLACK_WEBHOOK_URL"
        in out.stderr
    )
    assert "warning: channels.pager-hook.secret: environment variable HOOK_SECRET" in out.stderr
    assert "valid (2 secrets not set)" in out.stderr
    strict = lookout("check-config", "--strict", str(CONFIGS / "full.yaml"), env=env)
    assert strict.returncode == 2
    assert "error: channels.oncall-slack.webhook_url" in strict.stderr
    # `lookout run` still refuses a config whose secrets are not set.
    with pytest.raises(ConfigError, match="SLACK_WEBHOOK_URL is not set"):
        os.environ.pop("SLACK_WEBHOOK_URL", None)
        load_settings(CONFIGS / "full.yaml")


def test_messages_say_what_is_wrong_in_one_line_each(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "bus: {usernmae: me, url: 'mqtt://127.0.0.1:99999'}\n"
        "channels:\n  team: {kind: slack}\n"
        "rules:\n  - {name: slow, metric: latency_p95, threshold: 3, fro: 1m}\n"
    )
    out = lookout("check-config", str(f), env={**os.environ, "COLUMNS": "60"})
    assert out.returncode == 2
    lines = out.stderr.splitlines()
    assert lines[0] == "error: invalid configuration:"
    assert set(lines[1:]) == {
        "  bus.url: mqtt://127.0.0.1:99999 has an invalid port: a port is 1-65535",
        "  bus.usernmae: unknown key; did you mean bus.username?",
        "  channels.team: a slack channel needs `webhook_url`, or `token` and `channel`",
        "  rules.0.fro: unknown key; did you mean rules.0.for?",
    }
    assert "Value error" not in out.stderr


def test_a_far_unknown_key_gets_no_suggestion(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("judge: {zzz: 1}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(f)
    assert str(caught.value).endswith("judge.zzz: unknown key")


def test_for_zero_means_no_pending_state(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "rules:\n  - {name: slow, metric: latency_p95, threshold: 3, for: 0s, keep_firing_for: 0}\n"
    )
    rule = load_settings(f).rules[0]
    assert rule.for_s == 0.0 and rule.keep_firing_for == 0.0
    f.write_text("rules:\n  - {name: slow, metric: latency_p95, threshold: 3, for: -1}\n")
    with pytest.raises(ConfigError, match=r"rules\.0\.for: Input should be greater than or"):
        load_settings(f)


def _row(app: str, model: str, count: int, p95: float) -> dict[str, Any]:
    return {
        "app": app,
        "model": model,
        "count": count,
        "errors": 1,
        "qps": count / 300,
        "error_rate": 1 / count,
        "latency_p50": p95 / 2,
        "latency_p95": p95,
        "latency_p99": p95 * 1.5,
        "ttft_p95": 0.2,
        "tps": 41.5,
        "gen_tps_p50": 60.0,
        "tokens_per_request": 230.0,
        "cost_per_hour": 0.0123,
    }


def _status(apps: list[tuple[str, str]]) -> dict[str, Any]:
    series = [_row(a, m, 120, 1.234) for a, m in apps]
    series += [_row(a, "*", 120, 1.234) for a in {a for a, _ in apps}]
    return {
        "version": __version__,
        "bus": {"connected": True, "topics": ["llm/records/#"]},
        "ingest": {"processed_messages": 240, "queue_depth": 0, "paused": False},
        "window_s": 300.0,
        "series": series,
        "detectors": [
            {
                "app": a,
                "field": "prompt",
                "reference_id": 3,
                "drift_score": 0.42,
                "drifted": False,
                "ood_rate": 0.01,
            }
            for a in sorted({a for a, _ in apps})
        ],
        "judge": None,
    }


async def _status_output(tmp_path: Path, body: dict[str, Any], *args: str) -> str:
    async def answer(_: web.Request) -> web.Response:
        return web.json_response(body)

    app = web.Application()
    app.router.add_get("/api/v1/status", answer)
    async with serving(app) as url:
        config = tmp_path / "status.yaml"
        config.write_text(f"api: {{bind: '{url.removeprefix('http://')}'}}\n")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "lookout", "status", "--config", str(config), *args),
            stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "80"},
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    return out.decode()


async def test_status_fits_80_columns_and_never_cuts_names(tmp_path: Path) -> None:
    text = await _status_output(
        tmp_path, _status([("support-bot", "gpt-4o-mini"), ("summarizer", "gpt-4o")])
    )
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "…" not in text
    row = next(line for line in text.splitlines() if "gpt-4o-mini" in line)
    assert row.split()[:3] == ["support-bot", "gpt-4o-mini", "120"]
    assert "1.234" in row and "0.0123" in row
    assert "p99" not in text  # the compact columns


async def test_status_shows_feedback_engagement_and_tools(tmp_path: Path) -> None:
    body = _status([("support-bot", "gpt-4o-mini")])
    labels = {"app": "support-bot", "key": "thumbs", "count": 8}
    body["feedback"] = [
        {"metric": "feedback_count", "value": 8.0, **labels},
        {"metric": "feedback_score", "value": 0.625, **labels},
        {"metric": "negative_feedback_rate", "value": 0.375, **labels},
    ]
    body["engagement"] = [
        {"metric": "active_users", "app": "support-bot", "value": 1204.0, "count": 1204},
        {"metric": "requests_per_session", "app": "support-bot", "value": 3.25, "count": 40},
    ]
    tool = {"app": "support-bot", "tool": "order_status", "count": 8}
    body["tools"] = [
        {"metric": "tool_calls_per_request", "value": 0.5, **tool},
        {"metric": "tool_error_rate", "value": 0.25, **tool},
        {"metric": "tool_latency_p95", "value": 0.12, **tool},
        {"metric": "retrieval_rate", "app": "support-bot", "value": 1.0, "count": 16},
        {"metric": "empty_retrieval_rate", "app": "support-bot", "value": 0.125, "count": 16},
    ]
    text = await _status_output(tmp_path, body)
    row = next(line for line in text.splitlines() if "thumbs" in line)
    assert row.split() == ["support-bot", "thumbs", "8", "0.625", "37.5%"]
    engaged = next(line for line in text.splitlines() if "1204" in line)
    assert engaged.split() == ["support-bot", "1204", "-", "3.2", "-", "-"]
    tools = next(line for line in text.splitlines() if "order_status" in line)
    assert tools.split() == ["support-bot", "order_status", "0.50", "25.0%", "0.120", "-"]
    retrieval = next(line for line in text.splitlines() if "retrieval" in line.split()[1:2])
    assert retrieval.split() == ["support-bot", "retrieval", "1.00", "-", "-", "12.5%"]


async def test_status_long_names_become_blocks_and_wide_shows_every_series(
    tmp_path: Path,
) -> None:
    app, model = "customer-support-assistant-eu-west", "anthropic.claude-3-5-sonnet-20241022-v2:0"
    body = _status([(app, model)])
    text = await _status_output(tmp_path, body)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert app in text and model in text and "…" not in text
    assert f"\n  {model}\n    120 records, 0.400 req/s, 0.8% errors, p95 1.234 s," in text
    wide = await _status_output(tmp_path, body, "--wide")
    assert "p99 s" in wide and "gen tok/s p50" in wide and "…" not in wide

    assert any(app in line and model in line and "1.851" in line for line in wide.splitlines())


def test_a_port_in_use_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "c.yaml"
        config.write_text(
            f"api: {{bind: '127.0.0.1:{port}'}}\nstore: {{url: 'sqlite:///{tmp_path}/l.db'}}\n"
            "detectors: {enabled: false}\n"
        )
        out = lookout("run", "--config", str(config))
    assert out.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr
    assert "api.bind in the config or LOOKOUT_API__BIND" in out.stderr
