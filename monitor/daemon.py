"""The composition root: builds every component from the settings and runs them.

The daemon owns one exit stack (the components that are async context managers: store,
broker, API server, detection, judge, alert engine, OTLP receiver, MQTT source) and one
TaskGroup (the components that expose `run()`: ingest queue, rollups, systemd watchdog). The
API listens from early on for its probes and serves the routes that need the services once they
are all built; the OTLP receiver listens only then.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import structlog
from prometheus_client import CollectorRegistry

from lookout import __version__
from lookout.alerts.engine import AlertEngine
from lookout.alerts.outbox import Outbox
from lookout.clock import Clock, SystemClock
from lookout.detectors.judge import criteria_from
from lookout.monitor.alerting import build_alerting
from lookout.monitor.allocator import fix_mmap_threshold
from lookout.monitor.anomaly import AnomalyBook
from lookout.monitor.builders import (
    build_pipeline,
    build_usage,
    build_windows,
    decode_limits,
    detection_stores,
    merged_series,
    price_table,
)
from lookout.monitor.cluster.leadership import Role
from lookout.monitor.cluster.node import NodeCluster
from lookout.monitor.config import Settings, mask_url
from lookout.monitor.config.node import mqtt_client_id
from lookout.monitor.detection.embedding import build_embedder
from lookout.monitor.detection.sampler import AppSlots
from lookout.monitor.detection.service import DetectionService
from lookout.monitor.detection.state import DetectorCollector
from lookout.monitor.ingest.broker import EmbeddedBroker
from lookout.monitor.ingest.mqtt import MqttSource
from lookout.monitor.ingest.otlp_receiver import OtlpReceiver
from lookout.monitor.ingest.queue import IngestQueue
from lookout.monitor.judge.anchors import load_anchors
from lookout.monitor.judge.backends import judge_stores
from lookout.monitor.judge.client import JudgeClient, JudgeModelFactory, judge_model_from_config
from lookout.monitor.judge.eval_series import EvalCollector
from lookout.monitor.judge.eval_store import EvalStore
from lookout.monitor.judge.metrics import FeedbackAgreementCollector
from lookout.monitor.judge.service import JudgeService
from lookout.monitor.judge.store import JudgeStore
from lookout.monitor.metrics.prom import IngestMetrics, WindowCollector
from lookout.monitor.metrics.rollups import ROLLUP_S, RollupService, SeriesFn
from lookout.monitor.metrics.windows import WindowStats
from lookout.monitor.storage import open_store
from lookout.monitor.systemd import SystemdNotifier
from lookout.monitor.threads import limit_native_threads
from lookout.monitor.web.api import ApiServer, Probes
from lookout.monitor.web.dashboard import Dashboard, DashboardDeps
from lookout.monitor.web.routes import ApiRoutes, RouteDeps
from lookout.monitor.web.views import ApiViews
from lookout.redaction import Redactor
from lookout.series import SeriesPoint

log = structlog.get_logger(__name__)
_WARM_UP_WAIT_S = 30.0  # longest ingest waits for the detectors' embedder to be timed


class Daemon:
    # Built in run(), as the config asks for them.
    api: ApiServer | None = None
    otlp: OtlpReceiver | None = None
    detection: DetectionService | None = None
    judge: JudgeService | None = None
    judge_store: JudgeStore | None = None
    eval_store: EvalStore | None = None
    alerts: AlertEngine | None = None
    outbox: Outbox | None = None
    anomaly: AnomalyBook | None = None
    rollups: RollupService | None = None
    views: ApiViews | None = None

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        registry: CollectorRegistry | None = None,
        notifier: SystemdNotifier | None = None,
        drain_timeout_s: float = 3.0,
        judge_model_factory: JudgeModelFactory = judge_model_from_config,
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.notifier = notifier or SystemdNotifier()
        self.prom = IngestMetrics(self.registry)
        self.windows = build_windows(settings, self.clock.now())
        self.store = open_store(
            settings.store,
            self.prom,
            self.clock,
            keep_ids=settings.metrics.dedupe_ids,
            node=settings.node.id,
        )
        # One table for records and the judge: it owns lookout_cost_unknown_model_total.
        self.prices = price_table(settings, self.registry)
        self.cluster = NodeCluster(
            settings,
            self.store,
            self.windows,
            self.clock,
            registry=self.registry,
            new_windows=lambda started_at: build_windows(settings, started_at),
        )
        self.pipeline = build_pipeline(settings, self.windows, self.prom, self.store, self.prices)
        self.usage = build_usage(
            settings, self.pipeline, self.windows, self.store, self.registry, self.clock.now
        )
        self.queue = IngestQueue(settings.bus.queue_size, self.prom, settings.bus.queue_bytes)
        self.source = MqttSource(
            settings.bus,
            self.queue,
            self.prom,
            on_inflight_window=self.store.set_ack_window,
            commit=self.store.flush,
            client_id=mqtt_client_id(settings.bus, settings.node),
        )
        self.ready = asyncio.Event()
        self._judge_model_factory = judge_model_factory
        self._drain_timeout_s = drain_timeout_s
        self.registry.register(WindowCollector(self.current_stats))

    def current_stats(self) -> list[WindowStats]:
        return self.windows.query(self.settings.metrics.default_window, self.clock.now())

    def cluster_stats(self) -> list[WindowStats]:
        """Every node's, in a cluster (docs/scale-out.md); else this node's."""
        return self.cluster.windows.query(self.settings.metrics.default_window, self.clock.now())

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then drain the queue and flush the store."""
        s = self.settings
        fix_mmap_threshold()  # large temporary buffers go back to the OS when freed
        limit_native_threads()  # no BLAS workers spinning beside the ingest loop
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.store)
            await self.pipeline.restore(node=s.node.id if self.cluster.enabled else None)
            await self.usage.feedback.restore(self.clock.now())
            await stack.enter_async_context(self.cluster.running())
            if s.bus.embedded:
                await stack.enter_async_context(EmbeddedBroker(s.bus))
            api = await stack.enter_async_context(self._api_server())
            self.api = api
            await self._build_services(stack)
            api.serve(self._routes())
            if s.otlp.enabled:  # listens once every service its records reach exists
                self.otlp = await stack.enter_async_context(self._otlp_receiver())
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(job, name=name) for name, job in self._jobs().items()]
                await self._ingest_until(stop)
                for task in tasks:
                    task.cancel()
        log.info("lookout_stopped")

    def _jobs(self) -> dict[str, Coroutine[Any, Any, None]]:
        """The components that run as tasks of the daemon's TaskGroup."""
        assert self.rollups is not None
        return {
            "ingest": self.queue.run(self.pipeline, self.clock),
            "rollups": self.rollups.run(),
            "watchdog": self.notifier.watchdog(),
        }

    async def _ingest_until(self, stop: asyncio.Event) -> None:
        s = self.settings
        if self.detection is not None:  # its embedder timed first (a second at most, usually)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WARM_UP_WAIT_S):
                    await self.detection.warmed_up.wait()
        async with self.source.running():
            self.ready.set()
            self.notifier.ready()
            log.info(
                "lookout_started",
                version=__version__,
                store=mask_url(s.store.url),
                api=s.api.bind,
                bus=mask_url(s.bus.url),
            )
            await stop.wait()
            log.info("lookout_stopping", queued=len(self.queue))
            self.notifier.stopping()
            await self.source.stop(self._drain_timeout_s)

    def _api_server(self) -> ApiServer:
        probes = Probes(
            started=self.ready.is_set, bus_connected=self.source.connected.is_set, store=self.store
        )
        return ApiServer(
            self.settings.api,
            probes,
            registry=self.registry,
            max_payload_bytes=self.settings.bus.max_payload_bytes * 2,
        )

    def _otlp_receiver(self) -> OtlpReceiver:
        return OtlpReceiver(
            self.settings.otlp,
            self.pipeline,
            self.clock,
            registry=self.registry,
            limits=decode_limits(self.settings),
            api_token=self.settings.api.token,
        )

    async def _build_services(self, stack: contextlib.AsyncExitStack) -> None:
        s = self.settings
        if s.detectors.enabled:
            self.detection = await stack.enter_async_context(await self._detection_service(stack))
            self.pipeline.detector = self.detection.offer
        if s.judge.enabled:
            self.judge = await stack.enter_async_context(await self._judge_service(stack))
        extra_series = merged_series(self.detection, self.judge, *self.usage.series())
        redactor = Redactor(s.redaction.patterns)
        if s.rules:
            self.alerts = await stack.enter_async_context(
                await self._alert_engine(stack, extra_series)
            )
        self.rollups = RollupService(
            self.cluster.windows,
            self.store,
            self.clock,
            extra_series=extra_series,
            resume_from=await self._first_minute_not_rolled_up(),
        )
        self.views = ApiViews(
            clock=self.clock,
            window_s=s.metrics.default_window,
            source=self.source,
            queue=self.queue,
            current_stats=self.cluster_stats,
            redact=lambda text: redactor.redact(text).text,
            detection=self.detection,
            judge=self.judge,
            judge_store=self.judge_store,
            alerts=self.alerts,
            feedback=self.usage.feedback.points,
            engagement=self.usage.engagement.points if self.usage.engagement else None,
            tool_use=self.usage.tool_use.points if self.usage.tool_use else None,
        )

    async def _first_minute_not_rolled_up(self) -> int | None:
        """After the last minute rolled up within the windows' reach; else the first stored
        minute there; None for a fresh store."""
        since = self.clock.now() - self.windows.max_window_s
        stored = await self.store.rollups(since)
        if stored:
            return max(p.minute for p in stored) + ROLLUP_S
        partials = await self.store.partials(since)
        return min(p.minute for p in partials) if partials else None

    def _routes(self) -> ApiRoutes:
        assert self.views is not None and self.rollups is not None
        rollups = self.rollups
        dashboard = Dashboard(
            DashboardDeps(
                store=self.store,
                clock=self.clock,
                redactor=Redactor(self.settings.redaction.patterns),
                live=rollups.live_points,
                stored_minute=lambda: rollups.stored_minute,
                judge_failures=self.views.judge_failures,
                bands=self.anomaly.bands if self.anomaly is not None else None,
                rules=self.settings.rules,
            )
        )
        deps = RouteDeps(
            pipeline=self.pipeline,
            store=self.store,
            clock=self.clock,
            views=self.views,
            dashboard=dashboard,
            outbox=self.outbox,
            max_body_bytes=self.settings.bus.max_payload_bytes,
            silence_max_s=self.settings.silences.max_duration,
            feedback=self.usage.feedback,
            cluster=self.cluster.view.status,
        )
        return ApiRoutes(deps)

    async def _alert_engine(
        self, stack: contextlib.AsyncExitStack, extra_series: SeriesFn
    ) -> contextlib.AbstractAsyncContextManager[AlertEngine]:
        def rule_series(window_s: float, now: float) -> list[SeriesPoint]:
            return self.cluster.windows.points(window_s, now) + list(extra_series(window_s, now))

        built = await build_alerting(
            stack,
            self.settings,
            store=self.store,
            cluster=self.cluster,
            clock=self.clock,
            registry=self.registry,
            series=rule_series,
        )
        self.outbox, self.anomaly = built.outbox, built.anomaly
        return built.engine.running()

    async def _detection_service(self, stack: contextlib.AsyncExitStack) -> DetectionService:
        s = self.settings
        embedder = await asyncio.to_thread(build_embedder, s.detectors.embedder)
        references, shared = await detection_stores(s, stack, self.cluster)
        service = DetectionService(
            s.detectors,
            embedder=embedder,
            references=references,
            clock=self.clock,
            store=self.store,
            publish=self.source.publish_nowait,
            registry=self.registry,
            poll_interval_s=s.eval_interval,
            queue_size=s.detectors.queue_size,
            max_window_s=max(s.metrics.max_window, s.metrics.default_window),
            checkpoint_interval_s=s.detectors.checkpoint_interval,
            warm_up=s.detectors.embedder.kind != "langchain",  # not a remote service
            cluster=shared,
            slots=AppSlots(
                pinned=frozenset(s.metrics.pinned_apps), reclaim_after_s=s.metrics.reclaim_after
            ),
        )
        self.registry.register(DetectorCollector(service, s.metrics.default_window, self.clock))
        return service

    async def _judge_service(self, stack: contextlib.AsyncExitStack) -> JudgeService:
        s = self.settings
        j = s.judge
        model = await asyncio.to_thread(self._judge_model_factory, j)
        criteria = {c.name for c in criteria_from(j.criteria, j.custom_criteria)}
        anchors = load_anchors(j.anchors, criteria) if j.anchors else []
        stores = await stack.enter_async_context(judge_stores(s, self.store))
        self.judge_store, self.eval_store = stores
        # The detectors' embedder (a packaged one is loaded once per process and shared).
        embedder = None
        if j.reference_scores_per_run:
            embedder = await asyncio.to_thread(build_embedder, s.detectors.embedder)
        client = JudgeClient(
            model,
            Redactor(s.redaction.patterns),
            max_concurrency=j.max_concurrency,
            timeout_s=j.timeout_s,
            attempts=j.attempts,
            max_chars=j.max_chars,
        )
        service = JudgeService(
            j,
            store=self.judge_store,
            client=client,
            clock=self.clock,
            registry=self.registry,
            prices=self.prices,
            anchors=anchors,
            retention_s=s.store.retention,
            poll_interval_s=s.eval_interval,
            eval_store=self.eval_store,
            embedder=embedder,
            gate=self.cluster.leadership.gate(Role.JUDGE),
        )
        window_s, now = s.metrics.default_window, self.clock.now
        assert service.evaluations is not None
        self.registry.register(EvalCollector(service.evaluations.ledger, window_s, now))
        service.ledger.user_verdict = self.usage.feedback.user_verdict  # agreement with users
        self.registry.register(FeedbackAgreementCollector(lambda: service.series(window_s, now())))
        return service
