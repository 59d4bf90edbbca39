"""The alert rules of `lookout demo`: one or two per incident on its timeline, their windows
scaled by the demo's speed, all notifying the demo's own webhook receiver."""

from __future__ import annotations

from typing import Any

from lookout.monitor.demo.traffic import SUPPORT

HOOK = "demo-hook"


def _rule(
    speed: float,
    name: str,
    metric: str,
    threshold: float,
    for_s: float,
    *,
    summary: str,
    **extra: Any,
) -> dict[str, Any]:
    """A threshold rule over 30 s (at speed 1) that must hold `for_s` before it fires."""
    return {
        "name": name,
        "metric": metric,
        "threshold": threshold,
        "window": 30 / speed,
        "for": for_s / speed,
        "channels": [HOOK],
        "summary": summary,
        "severity": "warning",
        **extra,
    }


def _anomaly_rule(speed: float) -> dict[str, Any]:
    """support-bot's p95 latency against its learned normal (history seeded by `seed_history`)."""
    return {
        "name": "unusual-latency",
        "metric": "latency_p95",
        "where": {"app": SUPPORT},
        "op": "anomaly",
        "direction": "up",
        "sensitivity": 8,  # the demo's short windows are noisier than the learned minutes
        "window": 30 / speed,
        "for": 10 / speed,
        "min_samples": 20,
        "channels": [HOOK],
        "severity": "warning",
    }


def _call_rules(speed: float) -> list[dict[str, Any]]:
    """The calls themselves: latency, errors, and the detectors on their prompts."""
    return [
        _rule(
            speed,
            "slow-responses",
            "latency_p95",
            3.0,
            10,
            summary="p95 latency {value:.1f}s > {threshold:g}s ({app})",
            resolved_summary="p95 latency {value:.1f}s, back {back} {threshold:g}s ({app})",
        ),
        _anomaly_rule(speed),
        _rule(
            speed,
            "error-burst",
            "error_rate",
            0.15,
            5,
            summary="error rate {value:.0%} ({app})",
            resolved_summary="error rate {value:.0%}, back {back} {threshold:.0%} ({app})",
            severity="critical",
            min_samples=10,
        ),
        _rule(
            speed,
            "prompt-drift",
            "drift_score",
            1.5,
            10,
            summary="prompts drifted from the reference: score {value:.1f} ({app})",
            resolved_summary="prompt drift score {value:.1f}, back {back} {threshold:g} ({app})",
            where={"field": "prompt"},
        ),
        _rule(
            speed,
            "odd-prompts",
            "ood_rate",
            0.25,
            5,
            summary="{value:.0%} of prompts out of distribution ({app})",
            resolved_summary="{value:.0%} of prompts out of distribution, back {back} "
            "{threshold:.0%} ({app})",
            where={"field": "prompt"},
        ),
    ]


def _usage_rules(speed: float) -> list[dict[str, Any]]:
    """What goes on around the calls: tools, retrieval, users' thumbs, the shadow model."""
    return [
        _rule(
            speed,
            "tool-failing",
            "tool_error_rate",
            0.25,
            10,
            summary="{tool} fails on {value:.0%} of calls ({app})",
            resolved_summary="{tool} fails on {value:.0%} of calls, back {back} "
            "{threshold:.0%} ({app})",
            group_by=["app", "tool"],
            min_samples=10,
        ),
        _rule(
            speed,
            "empty-retrievals",
            "empty_retrieval_rate",
            0.5,
            10,
            summary="{value:.0%} of retrievals found no document ({app})",
            resolved_summary="{value:.0%} of retrievals found no document, back {back} "
            "{threshold:.0%} ({app})",
            min_samples=10,
        ),
        _rule(
            speed,
            "thumbs-down",
            "negative_feedback_rate",
            0.45,
            10,
            summary="{value:.0%} of users' thumbs are down ({app})",
            resolved_summary="{value:.0%} of users' thumbs down, back {back} "
            "{threshold:.0%} ({app})",
            where={"key": "thumbs"},
            min_samples=5,
        ),
        # The judge grades shadow pairs once a run (every 30 s): a window of 40 s holds one
        # run's pairs or two, and between runs (no pairs yet) the rule keeps its state.
        # Below -0.25: production clearly preferred, not a window half of the run before.
        _rule(
            speed,
            "shadow-losing",
            "judge_preference",
            -0.25,
            5,
            summary="the judge prefers production over {shadow_model}: preference {value:+.2f} "
            "({app})",
            resolved_summary="{shadow_model}'s preference {value:+.2f}, back {back} "
            "{threshold:g} ({app})",
            window=40 / speed,
            op="<",
            group_by=["app", "shadow_model"],
            no_data="keep",
            min_samples=3,
        ),
    ]


def demo_rules(speed: float) -> list[dict[str, Any]]:
    """The alert rules the demo's incidents fire, their windows scaled by the speed."""
    return _call_rules(speed) + _usage_rules(speed)
