"""Logging: structlog events and stdlib records from libraries leave as the same JSON lines."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
import structlog

from lookout.monitor.logs import configure_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("lookout", "amqtt", "transitions")}
    yield
    structlog.reset_defaults()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, saved in levels.items():
        logging.getLogger(name).setLevel(saved)


@pytest.mark.usefixtures("restore_logging")
def test_structlog_and_stdlib_records_are_json_lines_with_the_same_keys(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("info")
    structlog.get_logger("lookout.monitor.test").info("bus_connected", broker="127.0.0.1:1883")
    logging.getLogger("aiohttp.access").warning("slow client %s", "10.0.0.7")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(lines) == 2, lines
    ours, theirs = (json.loads(line) for line in lines)
    for entry in (ours, theirs):
        assert {"timestamp", "level", "event", "logger"} <= entry.keys(), entry
    assert ours["event"] == "bus_connected" and ours["level"] == "info"
    assert ours["logger"] == "lookout.monitor.test" and ours["broker"] == "127.0.0.1:1883"
    assert theirs["event"] == "slow client 10.0.0.7" and theirs["level"] == "warning"
    assert theirs["logger"] == "aiohttp.access"


@pytest.mark.usefixtures("restore_logging")
def test_libraries_stay_below_their_floor_and_lookout_follows_the_level(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("warning")
    configure_logging("info")  # twice: one handler, not two
    logging.getLogger("aiohttp.access").info("GET /metrics 200")
    logging.getLogger("amqtt.broker").warning("client went away")
    structlog.get_logger("lookout.monitor.test").debug("too_detailed")
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("lookout.monitor.test").exception("handler_failed")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1, lines
    entry = json.loads(lines[0])
    assert entry["event"] == "handler_failed" and entry["level"] == "error"
    assert "ValueError: boom" in entry["exception"]
