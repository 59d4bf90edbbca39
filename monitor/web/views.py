"""The API's answers, typed: pydantic models of the JSON `/api/v1/status`, `/api/v1/alerts`
and a record's verdicts return (docs/api.md), and the views that build them from the running
components. Field order is the JSON's key order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from lookout import __version__
from lookout.alerts.engine import AlertEngine
from lookout.clock import Clock
from lookout.monitor.detection.service import DetectionService
from lookout.monitor.ingest.mqtt import MqttSource
from lookout.monitor.ingest.queue import IngestQueue
from lookout.monitor.judge.service import JudgeService
from lookout.monitor.judge.store import JudgeStore, RunInfo
from lookout.monitor.metrics.windows import WindowStats
from lookout.series import SeriesPoint

_ALERT_ORDER = {"firing": 0, "pending": 1, "resolved": 2}


class BusStatus(BaseModel):
    connected: bool
    topics: list[str]


class IngestStatus(BaseModel):
    processed_messages: int
    queue_depth: int
    paused: bool


class WindowSeries(BaseModel):
    """One (app, model) over the default window; the series values follow as extra keys."""

    model_config = ConfigDict(extra="allow")
    app: str
    model: str
    count: int
    errors: int

    @classmethod
    def of(cls, stats: WindowStats) -> WindowSeries:
        return cls(
            app=stats.app,
            model=stats.model,
            count=stats.count,
            errors=stats.errors,
            **stats.series(),
        )


class JudgeSeriesValue(BaseModel):
    metric: str
    app: str | None = Field(default=None, exclude_if=lambda v: v is None)
    criterion: str | None = Field(default=None, exclude_if=lambda v: v is None)
    model: str | None = Field(default=None, exclude_if=lambda v: v is None)
    method: str | None = Field(default=None, exclude_if=lambda v: v is None)
    shadow_model: str | None = Field(default=None, exclude_if=lambda v: v is None)
    value: float | None
    count: int

    @classmethod
    def of(cls, point: SeriesPoint) -> JudgeSeriesValue:
        labels = dict(point.labels)
        return cls(
            metric=point.metric,
            app=labels.get("app"),
            criterion=labels.get("criterion"),
            model=labels.get("model"),
            method=labels.get("method"),
            shadow_model=labels.get("shadow_model"),
            value=point.value,
            count=point.count,
        )


class FeedbackSeriesValue(BaseModel):
    metric: str
    app: str
    key: str
    value: float | None
    count: int

    @classmethod
    def of(cls, point: SeriesPoint) -> FeedbackSeriesValue:
        labels = dict(point.labels)
        return cls(
            metric=point.metric,
            app=labels["app"],
            key=labels["key"],
            value=point.value,
            count=point.count,
        )


class EngagementSeriesValue(BaseModel):
    metric: str
    app: str
    value: float | None
    count: int

    @classmethod
    def of(cls, point: SeriesPoint) -> EngagementSeriesValue:
        app = dict(point.labels)["app"]
        return cls(metric=point.metric, app=app, value=point.value, count=point.count)


class ToolSeriesValue(BaseModel):
    metric: str
    app: str
    tool: str | None = Field(default=None, exclude_if=lambda v: v is None)
    value: float | None
    count: int

    @classmethod
    def of(cls, point: SeriesPoint) -> ToolSeriesValue:
        labels = dict(point.labels)
        return cls(
            metric=point.metric,
            app=labels["app"],
            tool=labels.get("tool"),
            value=point.value,
            count=point.count,
        )


class JudgeStatus(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    model: str | None
    criteria: list[str]
    running: str | None
    next_run_at: float | None
    last_run: RunInfo | None  # a stdlib dataclass: pydantic dumps its fields in order
    max_tokens_per_day: int
    series: list[JudgeSeriesValue] = []


class StatusResponse(BaseModel):
    version: str
    now: float
    window_s: float
    bus: BusStatus
    ingest: IngestStatus
    series: list[WindowSeries]
    detectors: list[dict[str, Any]]
    judge: JudgeStatus | None
    anomalies: list[AnomalyView] = []
    feedback: list[FeedbackSeriesValue] = []
    engagement: list[EngagementSeriesValue] = []
    tools: list[ToolSeriesValue] = []


class AnomalyView(BaseModel):
    """An anomaly rule's last reading: the value, the band outside which it is anomalous,
    its robust z and the z beyond which it is anomalous (the rule's, or higher where the
    series' own tail is fatter), and which normal it was measured against (`learning`: too
    little history)."""

    rule: str
    labels: dict[str, str]
    value: float
    baseline: str
    low: float | None
    high: float | None
    z: float | None
    threshold: float | None = None
    anomalous: bool
    history_points: int


class AlertView(BaseModel):
    rule: str
    labels: dict[str, str]
    state: str
    value: float | None
    fingerprint: str
    active_since: float | None
    resolved_at: float | None


class VerdictView(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    criterion: str
    passed: int  # 0 or 1 as stored: SQLite has no boolean, and the API has always said 0/1
    score: float
    reasoning: str
    judged_at: float
    judge_model: str
    run_id: int


def dump_json(models: BaseModel | list[Any]) -> Any:
    """A model (or a list of them) as the plain JSON value aiohttp encodes."""
    if isinstance(models, BaseModel):
        return models.model_dump(mode="json")
    return [m.model_dump(mode="json") for m in models]


@dataclass(frozen=True)
class ApiViews:
    """What the API reads from the running daemon; the optional services are None when the
    config leaves them off."""

    clock: Clock
    window_s: float
    source: MqttSource
    queue: IngestQueue
    current_stats: Callable[[], list[WindowStats]]
    # Applied to every text of the detectors' explanations, as the dashboard does.
    redact: Callable[[str], str]
    detection: DetectionService | None = None
    judge: JudgeService | None = None
    judge_store: JudgeStore | None = None
    alerts: AlertEngine | None = None
    feedback: Callable[[float, float], list[SeriesPoint]] | None = None  # (window_s, now)
    engagement: Callable[[float, float], list[SeriesPoint]] | None = None
    tool_use: Callable[[float, float], list[SeriesPoint]] | None = None

    def status(self) -> StatusResponse:
        now = self.clock.now()
        return StatusResponse(
            version=__version__,
            now=now,
            window_s=self.window_s,
            bus=BusStatus(connected=self.source.connected.is_set(), topics=self.source.topics()),
            ingest=IngestStatus(
                processed_messages=self.queue.processed,
                queue_depth=len(self.queue),
                paused=self.queue.paused,
            ),
            series=[WindowSeries.of(s) for s in self.current_stats()],
            detectors=self._detectors(now),
            judge=self._judge_status(now),
            anomalies=self._anomalies(),
            feedback=[
                FeedbackSeriesValue.of(p)
                for p in (self.feedback(self.window_s, now) if self.feedback else [])
            ],
            engagement=[
                EngagementSeriesValue.of(p)
                for p in (self.engagement(self.window_s, now) if self.engagement else [])
            ],
            tools=[
                ToolSeriesValue.of(p)
                for p in (self.tool_use(self.window_s, now) if self.tool_use else [])
            ],
        )

    def _detectors(self, now: float) -> list[dict[str, Any]]:
        """The detectors' status; their explanations quote prompts and responses: redacted."""
        if self.detection is None:
            return []
        listed = self.detection.status(self.window_s, now)
        for entry in listed:
            why = entry.get("explanation")
            if why:
                entry["explanation"] = {
                    key: [self.redact(text) for text in texts] for key, texts in why.items()
                }
        return listed

    def _anomalies(self) -> list[AnomalyView]:
        if self.alerts is None or self.alerts.anomaly is None:
            return []
        return [
            AnomalyView(
                rule=rule,
                labels=dict(labels),
                value=r.value,
                baseline=r.baseline.value,
                low=r.low,
                high=r.high,
                z=r.z,
                threshold=r.threshold,
                anomalous=r.anomalous,
                history_points=r.history,
            )
            for (rule, labels), r in self.alerts.anomaly.last.items()
        ]

    def _judge_status(self, now: float) -> JudgeStatus | None:
        if self.judge is None:
            return None
        status = JudgeStatus.model_validate(self.judge.status())
        status.series = [JudgeSeriesValue.of(p) for p in self.judge.series(self.window_s, now)]
        return status

    def alerts_listed(self) -> list[AlertView]:
        """Firing, pending and resolved alerts (resolved ones until their rule fires again)."""
        if self.alerts is None:
            return []
        listed = [
            AlertView(
                rule=a.rule,
                labels=dict(a.labels),
                state=a.state.value,
                value=a.value,
                fingerprint=a.fingerprint,
                active_since=a.active_since,
                resolved_at=a.resolved_at,
            )
            for a in self.alerts.alerts()
            if a.state.value in _ALERT_ORDER
        ]
        return sorted(listed, key=lambda a: (_ALERT_ORDER[a.state], a.rule))

    async def evaluations(self, record_id: str) -> dict[str, Any]:
        """A record's reference score and the shadow pairs it is in (judge.md)."""
        evals = None if self.judge is None else self.judge.evaluations
        if evals is None:
            return {"reference": None, "pairs": []}
        found = await evals.store.evaluations_for(record_id)
        score = found["reference"]
        return {
            "reference": None if score is None else asdict(score),
            "pairs": [asdict(p) for p in found["pairs"]],
        }

    async def verdicts(self, record_id: str) -> list[VerdictView]:
        if self.judge_store is None:
            return []
        stored = await self.judge_store.verdicts_for(record_id)
        return [VerdictView.model_validate(v) for v in stored]

    async def judge_failures(self, limit: int) -> list[dict[str, Any]]:
        return [] if self.judge_store is None else await self.judge_store.failures(limit)
