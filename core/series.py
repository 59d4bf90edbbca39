"""The series catalogue: what lookout measures, under which names and labels.

One home for names that the producers (the windowed metrics in `lookout.monitor`, the
detectors, the judge) and the readers (alert rules in `lookout.alerts`, status, charts) share,
so neither side imports the other for them. A `SeriesPoint` is one labelled value of a series
over one window; every producer hands its values to the alert rules as points.
"""

from __future__ import annotations

from dataclasses import dataclass

# The scope over every app (or every model) in a windowed series' labels.
ALL = "*"
# Where label values past a cardinality cap are counted together: apps beyond `max_apps`,
# models beyond `max_models`.
OTHER = "other"

# The ingest windows' series, per (app, model) scope: rates, latency quantiles, tokens, cost.
SERIES_NAMES: tuple[str, ...] = (
    "qps",
    "tps",
    "error_rate",
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "ttft_p95",
    "gen_tps_p50",
    "tokens_per_request",
    "cost_per_hour",
)
# The detectors' series, per (app, field).
DETECTOR_SERIES: tuple[str, ...] = ("drift_score", "drift_statistic", "drift_threshold", "ood_rate")
# The judge's series: pass rate per app, score per (app, criterion), agreement with the
# anchors' expected verdicts (no labels), similarity to reference answers per (app, model,
# method), a shadow model's preference over production per (app, model, shadow_model), and
# agreement with users' feedback per app.
JUDGE_SERIES: tuple[str, ...] = (
    "judge_pass_rate",
    "judge_score",
    "judge_agreement",
    "judge_reference_similarity",
    "judge_preference",
    "judge_feedback_agreement",
)
# Users' feedback, per (app, key): events in the window, their mean score, and the share at
# or below the key's negative score (docs/metrics.md).
FEEDBACK_SERIES: tuple[str, ...] = ("feedback_count", "feedback_score", "negative_feedback_rate")
# Engagement per app, from records' user_id and session_id: distinct users and sessions in the
# window, and the requests and length of the sessions that ended in it.
ENGAGEMENT_SERIES: tuple[str, ...] = (
    "active_users",
    "active_sessions",
    "requests_per_session",
    "session_duration_p50",
    "session_duration_p95",
)
# Tool and retrieval use, from records' `tools` and `retrieval`: per (app, tool) and per app.
TOOL_SERIES: tuple[str, ...] = (
    "tool_calls_per_request",
    "tool_error_rate",
    "tool_latency_p95",
    "retrieval_rate",
    "retrieval_latency_p95",
    "empty_retrieval_rate",
)
# The labels a series point may carry.
SERIES_LABELS: tuple[str, ...] = (
    "app",
    "model",
    "field",
    "criterion",
    "method",
    "shadow_model",
    "key",
    "tool",
)


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    metric: str  # a name from one of the tuples above
    labels: tuple[tuple[str, str], ...]
    value: float | None  # None: no data in the window
    count: int  # how many observations the value rests on (a rule's min_samples)
