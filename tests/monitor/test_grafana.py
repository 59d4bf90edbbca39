"""configs/grafana-dashboard.json only names metrics a running daemon really exports."""

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

DASHBOARD = Path(__file__).resolve().parents[2] / "configs" / "grafana-dashboard.json"


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
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    wanted = {m for e in exprs for m in re.findall(r"\blookout_[a-z0-9_]+", e)}
    assert len(wanted) >= 20 and len({p["id"] for p in dashboard["panels"]}) == len(
        dashboard["panels"]
    )
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
