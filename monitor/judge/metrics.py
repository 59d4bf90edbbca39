"""The judge's Prometheus instruments, on the daemon's registry."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lookout.series import SeriesPoint


class JudgeMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, list(labels), registry=registry)

        self.runs = counter("lookout_judge_runs_total", "Judge runs by outcome", ("outcome",))
        self.runs_skipped = counter(
            "lookout_judge_runs_skipped_total",
            "Judge runs not made, by reason (token_cap, still_running, standby, tick_taken)",
            ("reason",),
        )
        self.records = counter(
            "lookout_judge_records_total",
            "Records graded, by outcome (judged, failed, skipped)",
            ("outcome",),
        )
        self.verdicts = counter(
            "lookout_judge_verdicts_total",
            "Verdicts by criterion and result",
            ("criterion", "result"),
        )
        self.tokens = counter("lookout_judge_tokens_total", "Tokens the judge used", ("direction",))
        self.cost = counter("lookout_judge_cost_total", "The judge's cost (price table units)")
        self.redactions = counter(
            "lookout_judge_redactions_total", "PII findings removed before sending"
        )
        self.pairs = counter(
            "lookout_judge_pairs_total",
            "Shadow pairs by outcome (shadow, production, tie, inconsistent, failed, skipped)",
            ("outcome",),
        )
        self.incomplete_pairs = Gauge(
            "lookout_judge_incomplete_pairs",
            "Shadow records within judge.lookback, not graded, whose production record is not"
            " stored (skipped), as of the last run",
            registry=registry,
        )
        self.reference_scores = counter(
            "lookout_judge_reference_scores_total", "Records scored against a reference answer"
        )
        self.tokens_today = Gauge(
            "lookout_judge_tokens_today", "Tokens used this UTC day", registry=registry
        )
        self.agreement = Gauge(
            "lookout_judge_agreement_ratio",
            "Share of anchor verdicts as expected in the last run that had anchors",
            registry=registry,
        )


class FeedbackAgreementCollector(Collector):
    """judge_feedback_agreement{app} over the default window, at scrape time."""

    def __init__(self, points: Callable[[], list[SeriesPoint]]) -> None:
        self._points = points

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily(
            "lookout_judge_feedback_agreement_ratio",
            "Of the judged records users gave feedback on, the share where judge and users agree",
            labels=["app"],
        )
        for p in self._points():
            if p.metric == "judge_feedback_agreement" and p.value is not None:
                family.add_metric([dict(p.labels)["app"]], p.value)
        return [family]
