"""Costs from genai-prices' bundled table with the config's prices over it, and every record
without a price counted, so a zero cost is never silent."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.metrics.prices import Price, PriceTable, UnknownModels, library_price
from tests.conftest import eventually, running, sample_value

UNKNOWN = "lookout_cost_unknown_model_total"


def test_the_library_prices_gpt_4o_and_the_config_overrides_it() -> None:
    table = PriceTable({})
    # gpt-4o: $2.50 / $10 per million tokens; gpt-4o-mini $0.15 / $0.60.
    assert table.cost("gpt-4o", 1000, 1000) == pytest.approx(0.0025 + 0.01)
    assert table.cost("gpt-4o-mini-2024-07-18", 1000, 0) == pytest.approx(0.00015)
    assert table.cost("claude-3-5-sonnet-latest", 0, 1000) == pytest.approx(0.015)
    ours = PriceTable({"gpt-4o": Price(1.0, 2.0), "in-house": Price(0.5, 0.5)})
    assert ours.cost("gpt-4o-2024-08-06", 1000, 1000) == pytest.approx(3.0)
    assert ours.cost("in-house-7b", 2000, 0) == pytest.approx(1.0)
    assert PriceTable({}, library=False).lookup("gpt-4o") is None


def test_unknown_models_are_counted_under_bounded_labels() -> None:
    registry = CollectorRegistry()
    table = PriceTable({}, unknown=UnknownModels(registry, max_models=2))
    for model in ("my-llama", "my-llama", "other-ft", "third", "fourth"):
        assert table.cost(model, 10, 10) == 0.0
    assert table.cost("gpt-4o", 10, 10) > 0

    def count(model: str) -> float | None:
        return registry.get_sample_value(UNKNOWN, {"model": model})

    assert (count("my-llama"), count("other-ft"), count("other")) == (2, 1, 2)
    assert count("third") is None and count("gpt-4o") is None


def test_prices_need_no_network() -> None:
    """genai-prices answers from its bundled snapshot: with every connection refused."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('no network in this test')\n"
        "socket.socket.connect = refuse\n"
        "socket.create_connection = refuse\n"
        "from lookout.monitor.metrics.prices import library_price\n"
        "print(library_price('gpt-4o'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "input_per_1k=0.0025" in out.stdout
    assert library_price("surely-no-such-model-xyz") is None


async def test_daemon_costs_gpt_4o_and_counts_an_unknown_model(
    settings_for: Callable[..., Settings],
) -> None:
    records = [
        {"app": "a", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 1000},
        {"app": "a", "model": "acme-llm-7b", "input_tokens": 1000, "output_tokens": 1000},
        {"app": "a", "model": "acme-llm-7b", "input_tokens": 10},
    ]
    async with running(Daemon(settings_for())) as d:
        url = f"http://127.0.0.1:{d.api.port}"  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=url) as http:
            body = json.dumps(records)
            headers = {"Content-Type": "application/json"}
            assert (await http.post("/api/v1/records", content=body, headers=headers)).is_success
        await eventually(lambda: sample_value(d, UNKNOWN, {"model": "acme-llm-7b"}) == 2, d)
        cost = sample_value(d, "lookout_cost_total", {"app": "a", "model": "gpt-4o"})
        assert cost == pytest.approx(0.0125)
        assert sample_value(d, "lookout_cost_total", {"app": "a", "model": "acme-llm-7b"}) == 0
