"""The composition root: builds every component from the settings and runs them."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

import httpx
import structlog
from prometheus_client import CollectorRegistry

from lookout import __version__
from lookout.alerts.engine import AlertEngine, ChannelNotifier
from lookout.alerts.notifiers import build_notifier
from lookout.alerts.outbox import SqliteOutbox
from lookout.clock import Clock, SystemClock
from lookout.detectors.judge import criteria_from
from lookout.errors import ConfigError
from lookout.monitor.allocator import fix_mmap_threshold
from lookout.monitor.config import Settings
from lookout.monitor.detection.embedding import build_embedder
from lookout.monitor.detection.service import DetectionService
from lookout.monitor.detection.state import DetectorCollector
from lookout.monitor.ingest.broker import EmbeddedBroker
from lookout.monitor.ingest.mqtt import MqttSource
from lookout.monitor.ingest.pipeline import Pipeline
from lookout.monitor.ingest.queue import IngestQueue
from lookout.monitor.ingest.records import DecodeLimits
from lookout.monitor.judge.anchors import load_anchors
from lookout.monitor.judge.client import JudgeClient, chat_model
from lookout.monitor.judge.service import JudgeService
from lookout.monitor.judge.store import JudgeBook
from lookout.monitor.metrics.prices import Price, PriceTable
from lookout.monitor.metrics.prom import IngestMetrics, WindowCollector
from lookout.monitor.metrics.windows import ALL, WindowedMetrics, WindowStats
from lookout.monitor.storage import RollupPoint, Store, open_store, sqlite_path
from lookout.monitor.storage.references import ReferenceBook
from lookout.monitor.systemd import Notifier
from lookout.monitor.web.api import ApiDeps, ApiServer
from lookout.monitor.web.dashboard import Dashboard, DashboardDeps
from lookout.redaction import Redactor
from lookout.series import SeriesPoint

log = structlog.get_logger(__name__)
ROLLUP_S = 60


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
    )


def build_pipeline(
    settings: Settings, windows: WindowedMetrics, prom: IngestMetrics, store: Store
) -> Pipeline:
    return Pipeline(
        windows,
        price_table(settings),
        prom,
        store,
        decode_limits(settings),
        sample_rate=settings.store.record_sample_rate,
        dedupe_ids=settings.metrics.dedupe_ids,
    )


def price_table(settings: Settings) -> PriceTable:
    return PriceTable({name: Price(p.input, p.output) for name, p in settings.prices.items()})


def decode_limits(settings: Settings) -> DecodeLimits:
    return DecodeLimits(
        max_payload_bytes=settings.bus.max_payload_bytes,
        max_metadata_bytes=settings.metrics.max_metadata_bytes,
        max_text_chars=settings.metrics.max_text_chars,
    )


def rollup_points(stats: list[WindowStats], minute: int) -> list[RollupPoint]:
    return [
        RollupPoint(minute, s.app, s.model, name, value)
        for s in stats
        for name, value in s.series().items()
        if value is not None
    ]


def stats_json(stats: WindowStats) -> dict[str, Any]:
    return {
        "app": stats.app,
        "model": stats.model,
        "count": stats.count,
        "errors": stats.errors,
        **stats.series(),
    }


class Daemon:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        notifier: Notifier | None = None,
        drain_timeout_s: float = 3.0,
        judge_model: Any = None,
    ) -> None:
        """`judge_model`: a LangChain chat model to use instead of `judge.model` (tests)."""
        self.settings = settings
        self.clock = clock or SystemClock()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.notifier = notifier or Notifier()
        self.prom = IngestMetrics(self.registry)
        self.windows = build_windows(settings, self.clock.now())
        self.store: Store = open_store(settings.store, self.prom, self.clock)
        self.pipeline = build_pipeline(settings, self.windows, self.prom, self.store)
        self.queue = IngestQueue(settings.bus.queue_size, self.prom, settings.bus.queue_bytes)
        self.source = MqttSource(settings.bus, self.queue, self.prom)
        self.api: ApiServer | None = None
        self.alerts: AlertEngine | None = None
        self.detection: DetectionService | None = None
        self.outbox: SqliteOutbox | None = None
        self.judge: JudgeService | None = None
        self.judge_book: JudgeBook | None = None
        self._judge_model = judge_model
        self.ready = asyncio.Event()
        self._drain_timeout_s = drain_timeout_s
        self._last_rollup_minute = int(self.clock.now() // ROLLUP_S) * ROLLUP_S
        # The first minute whose rollups are not known to be in the store: charts take it and
        # what follows from the live windows.
        self.stored_minute = self._last_rollup_minute
        self.registry.register(WindowCollector(self.current_stats))

    def current_stats(self) -> list[WindowStats]:
        return self.windows.query(self.settings.metrics.default_window, self.clock.now())

    def status(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "now": self.clock.now(),
            "window_s": self.settings.metrics.default_window,
            "bus": {"connected": self.source.connected.is_set(), "topics": self.source.topics()},
            "ingest": {
                "processed_messages": self.queue.processed,
                "queue_depth": len(self.queue),
                "paused": self.queue.paused,
            },
            "series": [stats_json(s) for s in self.current_stats()],
            "detectors": (
                self.detection.status(self.settings.metrics.default_window, self.clock.now())
                if self.detection is not None
                else []
            ),
            "judge": (
                None
                if self.judge is None
                else {**self.judge.status(), "series": self.judge_series_json()}
            ),
        }

    def extra_series(self, window_s: float, now: float) -> list[SeriesPoint]:
        """The detectors' and the judge's series, for rules."""
        points: list[SeriesPoint] = []
        if self.detection is not None:
            points += [s.point() for s in self.detection.series(window_s, now)]
        if self.judge is not None:
            points += self.judge.series(window_s, now)
        return points

    def judge_series_json(self) -> list[dict[str, Any]]:
        if self.judge is None:
            return []
        window_s, now = self.settings.metrics.default_window, self.clock.now()
        return [
            {"metric": p.metric, **dict(p.labels), "value": p.value, "count": p.count}
            for p in self.judge.series(window_s, now)
        ]

    def _dashboard(self) -> Dashboard:
        deps = DashboardDeps(
            store=self.store,
            clock=self.clock,
            redactor=Redactor(self.settings.redaction.patterns),
            live=self.live_points,
            stored_minute=lambda: self.stored_minute,
            judge_failures=self.judge_failures,
        )
        return Dashboard(deps)

    async def judge_failures(self, limit: int) -> list[dict[str, Any]]:
        return [] if self.judge_book is None else await self.judge_book.failures(limit)

    async def verdicts(self, record_id: str) -> list[dict[str, Any]]:
        if self.judge_book is None:
            return []
        return [
            {
                "criterion": v.criterion,
                "passed": v.passed,
                "score": v.score,
                "reasoning": v.reasoning,
                "judged_at": v.judged_at,
                "judge_model": v.judge_model,
                "run_id": v.run_id,
            }
            for v in await self.judge_book.verdicts_for(record_id)
        ]

    def alerts_json(self) -> list[dict[str, Any]]:
        """Firing, pending and resolved alerts (resolved ones until their rule fires again)."""
        if self.alerts is None:
            return []
        order = {"firing": 0, "pending": 1, "resolved": 2}
        listed = [
            {
                "rule": a.rule,
                "labels": dict(a.labels),
                "state": a.state.value,
                "value": a.value,
                "fingerprint": a.fingerprint,
                "active_since": a.active_since,
                "resolved_at": a.resolved_at,
            }
            for a in self.alerts.alerts()
            if a.state.value in order
        ]
        return sorted(listed, key=lambda a: (order[a["state"]], a["rule"]))

    def write_rollups(self, now: float) -> int:
        """Write the per-minute rollups of every minute completed since the last call."""
        written = 0
        complete = int(now // ROLLUP_S) * ROLLUP_S
        # Minutes older than the longest window hold no data any more (after a long pause).
        oldest = complete - int(self.windows.max_window_s // ROLLUP_S) * ROLLUP_S
        minute = max(self._last_rollup_minute, oldest)
        while minute < complete:
            stats = self.windows.range(minute, minute + ROLLUP_S, now)
            points = rollup_points(stats, minute)
            self.store.put_rollups(points)
            written += len(points)
            minute += ROLLUP_S
        if self._last_rollup_minute < complete:
            # The detector and judge series have no history to replay: their value now stands
            # for the minute just completed.
            points = self.extra_points(complete - ROLLUP_S, now)
            self.store.put_rollups(points)
            written += len(points)
        self._last_rollup_minute = max(minute, complete)
        self.windows.prune(now)
        return written

    def extra_points(self, minute: int, now: float) -> list[RollupPoint]:
        """The detector and judge series as rollup rows (over all models); a labelled series'
        row name carries the label: drift_score:prompt, judge_score:helpfulness."""
        out = []
        for p in self.extra_series(ROLLUP_S, now):
            if p.value is None:
                continue
            labels = dict(p.labels)
            name = p.metric + "".join(
                f":{labels[k]}" for k in ("field", "criterion") if k in labels
            )
            out.append(RollupPoint(minute, labels.get("app", ALL), ALL, name, p.value))
        return out

    def live_points(self, now: float, since: float) -> list[RollupPoint]:
        """The minutes from `since` (not yet in the store) to the one under way, from the live
        windows, as rollup rows for charts that end now. The detector and judge series have no
        history: only the minute under way has them."""
        minute = int(now // ROLLUP_S) * ROLLUP_S
        first = max(int(since), minute - int(self.windows.max_window_s // ROLLUP_S) * ROLLUP_S)
        points = []
        for start in range(first, minute + 1, ROLLUP_S):
            points += rollup_points(self.windows.range(start, start + ROLLUP_S, now), start)
        return points + self.extra_points(minute, now)

    async def roll_up(self) -> None:
        """Write the completed minutes' rollups and, once the store has them, move the charts'
        boundary between stored and live minutes."""
        self.write_rollups(self.clock.now())
        written = self._last_rollup_minute
        await self.store.flush()
        self.stored_minute = max(self.stored_minute, written)

    async def _rollup_loop(self) -> None:
        while True:
            now = self.clock.now()
            # A few seconds past the minute, so records stamped at its end are in.
            await asyncio.sleep(math.ceil(now / ROLLUP_S) * ROLLUP_S - now + 2.0)
            await self.roll_up()

    async def _alert_engine(self, stack: contextlib.AsyncExitStack) -> AlertEngine:
        s = self.settings
        if not s.store.url.startswith("sqlite:///"):
            raise ConfigError("alert rules need the SQLite store for their outbox in this release")
        outbox = await stack.enter_async_context(SqliteOutbox(sqlite_path(s.store.url)))
        self.outbox = outbox
        http = await stack.enter_async_context(httpx.AsyncClient())
        notifiers: dict[str, ChannelNotifier] = {}
        for name, channel in s.channels.items():
            notifiers[name] = await stack.enter_async_context(
                build_notifier(name, channel, http=http, clock=self.clock, book=outbox)
            )
        return AlertEngine(
            s.rules,
            notifiers,
            windows=self.windows,
            outbox=outbox,
            clock=self.clock,
            registry=self.registry,
            eval_interval_s=s.eval_interval,
            external_url=s.api.external_url or "",
            max_age_s={name: c.max_age for name, c in s.channels.items()},
            extra_series=self.extra_series,
        )

    async def _detection_service(self, stack: contextlib.AsyncExitStack) -> DetectionService:
        s = self.settings
        embedder = await asyncio.to_thread(build_embedder, s.detectors.embedder)
        book = None
        if s.store.url.startswith("sqlite:///"):
            book = await stack.enter_async_context(ReferenceBook(sqlite_path(s.store.url)))
        service = DetectionService(
            s.detectors,
            embedder=embedder,
            book=book,
            clock=self.clock,
            store=self.store,
            publish=self.source.publish_nowait,
            registry=self.registry,
            poll_interval_s=s.eval_interval,
            queue_size=s.detectors.queue_size,
            max_window_s=max(s.metrics.max_window, s.metrics.default_window),
            checkpoint_interval_s=s.detectors.checkpoint_interval,
        )
        self.registry.register(DetectorCollector(service, s.metrics.default_window, self.clock))
        return service

    async def _judge_service(self, stack: contextlib.AsyncExitStack) -> JudgeService:
        s = self.settings
        if not s.store.url.startswith("sqlite:///"):
            raise ConfigError("the judge needs the SQLite store in this release")
        j = s.judge
        model = self._judge_model
        if model is None:
            assert j.model is not None  # the config requires it when enabled
            api_key = j.api_key.get_secret_value() if j.api_key else None
            model = await asyncio.to_thread(
                chat_model, j.model, base_url=j.base_url, api_key=api_key, timeout_s=j.timeout_s
            )
        criteria = {c.name for c in criteria_from(j.criteria, j.custom_criteria)}
        anchors = load_anchors(j.anchors, criteria) if j.anchors else []
        self.judge_book = await stack.enter_async_context(JudgeBook(sqlite_path(s.store.url)))
        client = JudgeClient(
            model,
            Redactor(s.redaction.patterns),
            max_concurrency=j.max_concurrency,
            timeout_s=j.timeout_s,
            attempts=j.attempts,
            max_chars=j.max_chars,
        )
        return JudgeService(
            j,
            book=self.judge_book,
            client=client,
            clock=self.clock,
            registry=self.registry,
            prices=price_table(s),
            anchors=anchors,
            retention_s=s.store.retention,
            poll_interval_s=s.eval_interval,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain the queue and flush the store."""
        s = self.settings
        fix_mmap_threshold()  # large temporary buffers go back to the OS when freed
        deps = ApiDeps(
            pipeline=self.pipeline,
            store=self.store,
            registry=self.registry,
            clock=self.clock,
            bus_connected=self.source.connected.is_set,
            status=self.status,
            alerts=self.alerts_json,
            outbox=lambda: self.outbox,
            verdicts=self.verdicts,
            dashboard=self._dashboard(),
            max_payload_bytes=s.bus.max_payload_bytes * 2,
            started=self.ready.is_set,
        )
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.store)
            if s.bus.embedded:
                await stack.enter_async_context(EmbeddedBroker(s.bus))
            self.api = await stack.enter_async_context(ApiServer(s.api, deps))
            if s.detectors.enabled:
                self.detection = await stack.enter_async_context(
                    await self._detection_service(stack)
                )
                self.pipeline.detector = self.detection.offer
            if s.judge.enabled:
                self.judge = await stack.enter_async_context(await self._judge_service(stack))
            if s.rules:
                self.alerts = await stack.enter_async_context(await self._alert_engine(stack))
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self.queue.run(self.pipeline, self.clock), name="ingest"),
                    tg.create_task(self._rollup_loop(), name="rollups"),
                    tg.create_task(self.notifier.watchdog(), name="watchdog"),
                ]
                async with self.source.running():
                    self.ready.set()
                    self.notifier.ready()
                    log.info(
                        "lookout_started",
                        version=__version__,
                        store=s.store.url,
                        api=s.api.bind,
                        bus=s.bus.url,
                    )
                    await stop.wait()
                    log.info("lookout_stopping", queued=len(self.queue))
                    self.notifier.stopping()
                    await self.source.stop(self._drain_timeout_s)
                for task in tasks:
                    task.cancel()
            self.write_rollups(self.clock.now())
        log.info("lookout_stopped")
