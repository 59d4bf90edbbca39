"""configs/grafana-dashboard.json only names metrics a running daemon really exports, or
those of the model servers' own exporters that docs/metrics.md names."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import httpx
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from tests.alerts.test_engine import post
from tests.conftest import running

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "configs" / "grafana-dashboard.json"
# The "Model servers" row: node_exporter, NVIDIA DCGM and vLLM's /metrics, not lookout's.
EXPORTER_METRICS = {
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "vllm:num_requests_running",
    "vllm:gpu_cache_usage_perc",
    "vllm:time_to_first_token_seconds_bucket",
}
PROMQL_WORDS = {"sum", "avg", "max", "min", "rate", "increase", "histogram_quantile"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (label matchers, ranges and grouping
    labels left out; a name followed by "(" is a function)."""
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\b(?:by|without)\s*\([^)]*\)", " ", expr)
    names = {m[0] for m in re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", bare) if not m[1]}
    return names - PROMQL_WORDS


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.add(name)
            names.update(
                {
                    "counter": [f"{name}_total"],
                    "histogram": [f"{name}_bucket", f"{name}_sum", f"{name}_count"],
                }.get(kind, [])
            )
    return names


async def test_every_metric_the_grafana_dashboard_queries_is_exported(
    settings_for: Callable[..., Settings],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    named = {m for e in exprs for m in metric_names(e)}
    wanted = {m for m in named if m.startswith("lookout_")}
    assert len(wanted) >= 35 and len({p["id"] for p in panels}) == len(panels)
    # Anything else is a model-server exporter's metric, and docs/metrics.md names it.
    assert named - wanted == EXPORTER_METRICS
    docs = (ROOT / "docs" / "metrics.md").read_text()
    assert all(m.removesuffix("_bucket") in docs for m in EXPORTER_METRICS)
    # Each of the new families has its own row, the model servers one too.
    rows = {p["title"] for p in panels if p["type"] == "row"}
    assert {"User feedback", "Engagement", "Tools and retrieval"} <= rows
    assert any(r.startswith("Model servers") for r in rows)
    base = settings_for()
    settings = Settings.model_validate(
        {
            **base.model_dump(mode="python", by_alias=True, exclude={"rules", "judge"}),
            "bus": {**base.bus.model_dump(), "password": None},
            "judge": {"enabled": True, "model": "fake:judge"},
            "rules": [{"name": "errors", "metric": "error_rate", "threshold": 0.5}],
        }
    )
    model = FakeListChatModel(responses=["Fine.\nY"])
    async with running(
        Daemon(settings, judge_model_factory=lambda cfg: model), wait_bus=False
    ) as d:
        await post(d, [{"app": "bot", "prompt": "hi", "response": "hello", "latency_ms": 300}])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            text = (await http.get("/metrics")).text
    assert wanted - exported_names(text) == set()
