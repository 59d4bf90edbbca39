"""Rules: which scopes they watch, no-data and minimum samples, and config-time checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from lookout.alerts.config import RuleConfig
from lookout.alerts.rules import Observation, Rule, observe
from lookout.errors import ConfigError
from lookout.monitor.config import Settings, load_settings
from lookout.series import ALL, SeriesPoint


def scope(app: str, model: str, count: int, p95: float | None) -> list[SeriesPoint]:
    """One (app, model) scope's windowed series as the engine's series source gives them."""
    labels = (("app", app), ("model", model))
    return [
        SeriesPoint("latency_p95", labels, p95, count),
        SeriesPoint("ttft_p95", labels, None, count),
        SeriesPoint("qps", labels, 1.0, count),
    ]


WINDOW = [
    *scope("bot", "gpt-4o", 50, 3.0),
    *scope("bot", ALL, 80, 2.5),
    *scope("shop", ALL, 40, 0.8),
    *scope("quiet", ALL, 2, 9.0),
    *scope(ALL, ALL, 122, 2.0),
]


def test_without_where_each_app_is_watched_separately() -> None:
    rule = Rule("slow", "latency_p95", threshold=2.0, min_samples=5)
    by_app = {dict(o.labels)["app"]: o for o in observe(rule, WINDOW)}
    assert set(by_app) == {"bot", "shop", "quiet"}
    assert by_app["bot"] == Observation((("app", "bot"), ("model", ALL)), True, 2.5)
    assert by_app["shop"].breached is False
    # Two requests are too few to page on.
    assert by_app["quiet"].breached is None


def test_where_picks_one_scope_and_an_empty_scope_is_no_data() -> None:
    rule = Rule(
        "slow-4o", "latency_p95", threshold=2.0, op=">=", where={"app": "bot", "model": "gpt-4o"}
    )
    assert observe(rule, WINDOW) == [Observation((("app", "bot"), ("model", "gpt-4o")), True, 3.0)]
    gone = Rule("slow-gone", "latency_p95", threshold=2.0, where={"app": "gone"})
    assert observe(gone, WINDOW) == [Observation((("app", "gone"), ("model", ALL)), None, None)]


def test_a_series_without_a_value_is_no_data() -> None:
    rule = Rule("ttft", "ttft_p95", threshold=1.0)
    assert all(o.breached is None for o in observe(rule, WINDOW))


CASES = [
    ("{name: r1, metric: latency_p95x, threshold: 1}", "rule 'r1': unknown metric 'latency_p95x'"),
    ("{name: r2, metric: qps, threshold: 1, where: {tenant: a}}", "rule 'r2': unknown label"),
    ("{name: r3, metric: qps, threshold: 1, channels: [nope]}", "rule 'r3' names unknown channel"),
]


@pytest.mark.parametrize(("rule", "message"), CASES)
def test_check_config_names_the_rule(tmp_path: Path, rule: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(f"rules:\n  - {rule}\n")
    with pytest.raises(ConfigError, match=message):
        load_settings(f)


def test_detector_and_judge_series_may_be_named() -> None:
    rule = {
        "name": "drift",
        "metric": "drift_score",
        "threshold": 1.0,
        "where": {"app": "bot", "field": "prompt"},
    }
    settings = Settings.model_validate({"rules": [rule]})
    assert settings.rules[0].metric == "drift_score"


def test_detector_series_are_filtered_by_the_labels_they_have() -> None:
    drift = [
        SeriesPoint("drift_score", (("app", "bot"), ("field", "prompt")), 2.0, 200),
        SeriesPoint("drift_score", (("app", "bot"), ("field", "response")), 0.5, 200),
        SeriesPoint("drift_score", (("app", "shop"), ("field", "prompt")), 3.0, 3),
    ]
    rule = Rule("drift", "drift_score", threshold=1.0, where={"field": "prompt"}, min_samples=5)
    assert observe(rule, [*WINDOW, *drift]) == [
        Observation((("app", "bot"), ("field", "prompt")), True, 2.0),
        Observation((("app", "shop"), ("field", "prompt")), None, 3.0),
    ]


def test_rule_config_lives_with_the_alerts() -> None:
    rule = RuleConfig.model_validate({"name": "r", "metric": "ood_rate", "threshold": 0.1})
    assert Settings.model_validate({"rules": [rule.model_dump(by_alias=True)]}).rules == [rule]
