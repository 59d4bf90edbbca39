"""Components built from the settings alone: shared by the daemon, `lookout replay` and
`lookout baseline`, which must not import the daemon to get them."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from lookout.monitor.config import Settings
from lookout.monitor.ingest.feedback_ingest import FeedbackIngest
from lookout.monitor.ingest.pipeline import Pipeline
from lookout.monitor.ingest.records import DecodeLimits
from lookout.monitor.metrics.engagement import EngagementCollector, EngagementWindows
from lookout.monitor.metrics.feedback import FeedbackCollector, FeedbackMetrics, FeedbackWindows
from lookout.monitor.metrics.prices import Price, PriceTable, UnknownModels
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.metrics.rollups import SeriesFn
from lookout.monitor.metrics.tools import ToolCollector, ToolWindows
from lookout.monitor.metrics.windows import ALL, WindowedMetrics
from lookout.monitor.storage import Store
from lookout.redaction import Redactor
from lookout.series import SeriesPoint

if TYPE_CHECKING:
    from lookout.monitor.cluster.node import NodeCluster
    from lookout.monitor.detection.service import DetectionService
    from lookout.monitor.detection.shared_drift import ClusterDetection
    from lookout.monitor.judge.service import JudgeService
    from lookout.monitor.storage.references import References


def build_windows(
    settings: Settings,
    started_at: float,
    *,
    bucket_s: float | None = None,
    max_window_s: float | None = None,
) -> WindowedMetrics:
    m = settings.metrics
    return WindowedMetrics(
        bucket_s=bucket_s or m.bucket_s,
        max_window_s=max_window_s or max(m.max_window, m.default_window),
        max_apps=m.max_apps,
        max_models=m.max_models,
        started_at=started_at,
        pinned_apps=m.pinned_apps,
        reclaim_after_s=m.reclaim_after,
    )


def build_pipeline(
    settings: Settings,
    windows: WindowedMetrics,
    prom: IngestMetrics,
    store: Store,
    prices: PriceTable | None = None,
) -> Pipeline:
    return Pipeline(
        windows,
        prices or price_table(settings, prom.registry),
        prom,
        store,
        decode_limits(settings),
        sample_rate=settings.store.record_sample_rate,
        dedupe_ids=settings.metrics.dedupe_ids,
        shadow_key=settings.judge.shadow_key,
    )


def price_table(settings: Settings, registry: CollectorRegistry | None = None) -> PriceTable:
    """The config's prices over genai-prices'; unknown models counted on `registry`."""
    unknown = None if registry is None else UnknownModels(registry, settings.metrics.max_models)
    return PriceTable(
        {name: Price(p.input, p.output) for name, p in settings.prices.items()}, unknown=unknown
    )


def decode_limits(settings: Settings) -> DecodeLimits:
    return DecodeLimits(
        max_payload_bytes=settings.bus.max_payload_bytes,
        max_metadata_bytes=settings.metrics.max_metadata_bytes,
        max_text_chars=settings.metrics.max_text_chars,
        max_records_per_message=settings.metrics.max_records_per_message,
    )


def build_feedback(
    settings: Settings, store: Store, registry: CollectorRegistry, now: Callable[[], float]
) -> FeedbackIngest:
    """Feedback ingest and its windows; its series exported on `registry` (default window)."""
    m, f = settings.metrics, settings.feedback
    windows = FeedbackWindows(
        bucket_s=m.bucket_s,
        max_window_s=max(m.max_window, m.default_window),
        max_apps=m.max_apps,
        max_keys=f.max_keys,
        pinned_apps=m.pinned_apps,
    )
    redactor = Redactor(settings.redaction.patterns)
    ingest = FeedbackIngest(
        f,
        settings.bus.feedback_topics,
        windows,
        store,
        FeedbackMetrics(registry),
        decode_limits(settings),
        lambda text: redactor.redact(text).text,
    )
    registry.register(FeedbackCollector(lambda: ingest.points(m.default_window, now())))
    return ingest


def build_engagement(
    settings: Settings, registry: CollectorRegistry, now: Callable[[], float]
) -> EngagementWindows | None:
    """Engagement windows (None when disabled); their series exported on `registry`."""
    m, e = settings.metrics, settings.engagement
    if not e.enabled:
        return None
    windows = EngagementWindows(
        bucket_s=e.bucket,
        max_window_s=max(m.max_window, m.default_window),
        lg_k=e.lg_k,
        idle_gap_s=e.session_idle_gap,
        max_open_sessions=e.max_open_sessions,
    )
    registry.register(
        EngagementCollector(
            lambda: windows.points(m.default_window, now()), lambda: windows.evicted
        )
    )
    return windows


def build_tool_use(
    settings: Settings,
    windows: WindowedMetrics,
    registry: CollectorRegistry,
    now: Callable[[], float],
) -> ToolWindows | None:
    """Tool and retrieval windows (None when disabled), their rates over `windows`' record
    counts; their series exported on `registry`."""
    m = settings.metrics
    if not settings.tools.enabled:
        return None

    def requests(window_s: float, at: float) -> dict[str, int]:
        stats = windows.query(window_s, at)
        return {s.app: s.count for s in stats if s.model == ALL and s.app != ALL}

    tools = ToolWindows(
        requests,
        bucket_s=m.bucket_s,
        max_window_s=max(m.max_window, m.default_window),
        max_tools=settings.tools.max_names,
    )
    registry.register(ToolCollector(tools, lambda: tools.points(m.default_window, now())))
    return tools


@dataclass(frozen=True, slots=True)
class Usage:
    """How users use the apps, beside the calls: feedback, engagement, tool and retrieval use."""

    feedback: FeedbackIngest
    engagement: EngagementWindows | None
    tool_use: ToolWindows | None

    def series(self) -> list[SeriesFn]:
        """The feedback series, and the engagement and tool-use ones when enabled."""
        out: list[SeriesFn] = [self.feedback.points]
        return out + [x.points for x in (self.engagement, self.tool_use) if x is not None]


def build_usage(  # noqa: PLR0917 - the pipeline it feeds from and where its parts report
    settings: Settings,
    pipeline: Pipeline,
    windows: WindowedMetrics,
    store: Store,
    registry: CollectorRegistry,
    now: Callable[[], float],
) -> Usage:
    """Feedback (the messages on feedback topics routed off `pipeline`), engagement and tool use
    (fed each record by `pipeline`), their series exported on `registry`."""
    feedback = build_feedback(settings, store, registry, now)
    pipeline.route = feedback.route
    engagement = build_engagement(settings, registry, now)
    if engagement is not None:
        pipeline.engagement = engagement.observe_many
    tool_use = build_tool_use(settings, windows, registry, now)
    if tool_use is not None:
        pipeline.tool_use = tool_use.observe_many
    return Usage(feedback, engagement, tool_use)


def merged_series(
    detection: DetectionService | None, judge: JudgeService | None, *more: SeriesFn
) -> SeriesFn:
    """The detectors', the judge's and `more` series (usage), as rules and rollups read them."""

    def series(window_s: float, now: float) -> list[SeriesPoint]:
        points: list[SeriesPoint] = []
        for extra in more:
            points += extra(window_s, now)
        if detection is not None:
            points += [s.point() for s in detection.series(window_s, now)]
        if judge is not None:
            points += judge.series(window_s, now)
        return points

    return series


def open_references(settings: Settings, *, cluster: bool) -> References:
    """The detectors' references: in PostgreSQL for a cluster (every node loads them), else in
    the node's SQLite file."""
    if cluster:
        from lookout.monitor.storage.pg_references import PgReferenceStore

        s = settings.store
        return PgReferenceStore(s.url, node=settings.node.id, connect_timeout_s=s.connect_timeout_s)
    from lookout.monitor.storage.references import ReferenceStore

    return ReferenceStore(settings.store.local_path())


async def detection_stores(
    settings: Settings,
    stack: contextlib.AsyncExitStack,
    cluster: NodeCluster,
) -> tuple[References, ClusterDetection | None]:
    """The detectors' references (entered on `stack`) and, in a cluster, how they share drift
    (docs/scale-out.md "Drift and OOD across nodes")."""
    if not cluster.enabled:
        return await stack.enter_async_context(open_references(settings, cluster=False)), None
    from lookout.monitor.cluster.leadership import Role
    from lookout.monitor.detection.shared_drift import ClusterDetection
    from lookout.monitor.storage.pg_references import PgReferenceStore

    leadership = cluster.leadership
    s, fits = settings.store, leadership.gate(Role.REFERENCES)
    references = PgReferenceStore(
        s.url, node=settings.node.id, connect_timeout_s=s.connect_timeout_s, fence=fits.fenced
    )
    await stack.enter_async_context(references)
    m, d = settings.metrics, settings.detectors
    shared = ClusterDetection(
        node=settings.node.id,
        samples=references.samples,
        drift=leadership.gate(Role.ALERTS),  # where the rules that read drift are evaluated
        references=fits,
        keep_texts=2 * d.drift.window,
        max_age_s=max(m.max_window, m.default_window),
    )
    return references, shared
