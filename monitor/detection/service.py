"""Drift and OOD detection beside ingest: sample records, embed them off the event loop, and
keep per (app, field) drift windows and OOD counts that rules, /metrics and the status read.

The hot path only appends to a bounded queue (`offer`); one worker thread (thread.py) owns
every detector and embeds in batches, so a slow embedder can never block ingest: the queue
fills, the sampler lowers its rate on its own, and what still does not fit is dropped and
counted. The thread never waits on the loop: a batch returns its scores and fit requests to
the loop task that dispatched it, which hands them to the store (outputs.py) and to the
reference manager (reference_manager.py), where every piece of I/O is awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

from lookout.detectors.reference import DetectorParams
from lookout.monitor.detection.embedding_cache import EmbeddingCache
from lookout.monitor.detection.handoff import BatchOutcome, QueuedText
from lookout.monitor.detection.metrics import DetectionMetrics
from lookout.monitor.detection.outputs import ScoreOutputs
from lookout.monitor.detection.reference_manager import ReferenceManager
from lookout.monitor.detection.sampler import AppSlots, CpuBudget, Sampler
from lookout.monitor.detection.shared_drift import SharedDrift
from lookout.monitor.detection.state import DetectorSeries, detector_series, detector_status
from lookout.monitor.detection.thread import DetectionThread
from lookout.monitor.detection.tracks import BUCKET_S, TrackTable

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from lookout.clock import Clock
    from lookout.detectors.embedders import Embedder
    from lookout.monitor.config import DetectorsConfig
    from lookout.monitor.detection.shared_drift import ClusterDetection
    from lookout.monitor.ingest.records import Record
    from lookout.monitor.storage import Store
    from lookout.monitor.storage.references import References

log = structlog.get_logger(__name__)
_BATCH = 256
# Made-up texts of a long request (~100 words: overrating a text's cost errs on the side of the
# apps beside us), to time the embedder at start.
_PHRASE = (
    "please help me check the status of my order and tell me when it will arrive because "
    "I need it before the weekend for a trip with my family to the coast next month"
)
_WORDS = _PHRASE.split()
_WARM_UP = [" ".join(_WORDS[(i * 7 + j) % len(_WORDS)] for j in range(100)) for i in range(20)]
_MAX_TEXT_CHARS = 2000  # embedders see the head of long texts


class DetectionService:
    processed = 0  # texts taken off the queue since start
    _stack: contextlib.AsyncExitStack | None = None  # while running: what stops it

    def __init__(
        self,
        cfg: DetectorsConfig,
        *,
        embedder: Embedder,
        references: References | None,  # None: references live in memory only
        clock: Clock,
        store: Store | None = None,
        publish: Callable[[str, bytes], bool] | None = None,
        registry: CollectorRegistry,
        poll_interval_s: float = 10.0,
        queue_size: int = 10_000,
        max_window_s: float = 3600.0,
        slots: AppSlots = AppSlots(),  # noqa: B008 - frozen
        adapt_interval_s: float = 1.0,
        drain_timeout_s: float = 2.0,
        checkpoint_interval_s: float = 60.0,
        warm_up: bool = False,  # time the embedder on made-up texts first (a local one)
        cluster: ClusterDetection | None = None,  # drift on the cluster's traffic
    ) -> None:
        self._fields = tuple(cfg.fields)
        self._prompts, self._responses = "prompt" in self._fields, "response" in self._fields
        drift = cfg.drift
        params = DetectorParams(drift_window=drift.window, drift_ert=drift.ert, ood_fpr=cfg.ood.fpr)
        self._metrics = metrics = DetectionMetrics.create(registry)
        self._thread = DetectionThread()
        self._tracks = TrackTable(
            buckets=int(max_window_s // BUCKET_S) + 2,
            slots=slots,
            reference_size=max(cfg.reference.auto_size, params.min_reference()),
        )
        self._embeddings = EmbeddingCache(embedder, clock=clock, metrics=metrics)
        self._embedder, self._warm_up = embedder, warm_up
        self._outputs = ScoreOutputs(
            store=store, publish=publish, output_topic=cfg.ood.output_topic, metrics=metrics
        )
        self._references = ReferenceManager(
            store=references,
            tracks=self._tracks,
            thread=self._thread,
            embedder_name=embedder.name,
            params=params,
            clock=clock,
            metrics=metrics,
            max_window_s=max_window_s,
            poll_interval_s=poll_interval_s,
            checkpoint_interval_s=checkpoint_interval_s,
        )
        shared = (self._tracks, self._thread, self._references, params.drift_window)
        self._shared = None if cluster is None else SharedDrift(cluster, *shared, clock, registry)
        self._budget, self._sampler = _sampling(cfg, warm_up, adapt_interval_s, slots)
        self._queue: deque[QueuedText] = deque()
        self._queue_size, self._adapt_interval_s = queue_size, adapt_interval_s
        self._drain_timeout_s, self._dropped_since_adapt, self._inflight = drain_timeout_s, 0, 0
        self._wake, self._idle, self.warmed_up = asyncio.Event(), asyncio.Event(), asyncio.Event()
        self._idle.set()  # set whenever the queue has been worked off

    # -- the hot path -------------------------------------------------------------------------

    def offer(
        self, record: Record, now: float, stored_id: str | None = None, cost: float = 0.0
    ) -> None:
        """Maybe queue the record's texts for embedding: errors always, others by the app's
        rate and within its share of the CPU budget (`max_cpu_share`), whatever the ingest
        rate (sampler.py)."""
        texts = (self._prompts and bool(record.prompt)) + (
            self._responses and bool(record.response)
        )
        if not self._sampler.admit(record.app, texts, error=record.status == "error"):
            return
        for field in self._fields:
            text = record.prompt if field == "prompt" else record.response
            if not text:
                continue
            if len(self._queue) >= self._queue_size:
                self._metrics.dropped.inc()
                self._dropped_since_adapt += 1
                continue
            self._queue.append(
                QueuedText(record.app, field, text[:_MAX_TEXT_CHARS], now, record, stored_id, cost)
            )
            self._idle.clear()
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self._running())
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stack is not None:
            await self._stack.aclose()

    @contextlib.asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        try:
            await self._references.load_active()  # saved references first: no recalibration
            if self._shared is None:  # in a cluster, the drift role's holder restores them
                await self._references.restore_windows()  # drift goes on from where it stopped
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(self._work(), name="detector-worker"),
                    tg.create_task(self._adapt_forever(), name="detector-sampler"),
                    tg.create_task(self._references.run(), name="detector-references"),
                ]
                if self._shared is not None:
                    tasks.append(tg.create_task(self._shared.run(), name="detector-cluster"))
                try:
                    yield
                finally:
                    for task in tasks:
                        task.cancel()
        finally:
            await self._references.close(self._drain_timeout_s)
            if self._shared is not None:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._drain_timeout_s):
                        await self._shared.flush()
            await self._thread.stop(self._drain_timeout_s)

    # -- the worker (a loop task dispatching batches to the detection thread) -----------------

    async def _work(self) -> None:
        if self._warm_up:
            await self._measure_cost()
        self.warmed_up.set()
        while True:
            if not self._queue:
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            self._inflight = len(batch)
            try:
                outcome, cpu_s = await self._thread.call(self._process, batch)
                guessed = not self._budget.measured
                self._budget.observe(cpu_s, len(batch))
                if guessed and self._budget.measured:  # the first measurement: act on it now
                    texts_per_s = self._budget.texts_per_s()
                    self._sampler.set_texts_per_s(texts_per_s, self._adapt_interval_s)
                for request in outcome.fits:
                    self._references.request_fit(request)
                self._outputs.keep(outcome.scored)
                if self._shared is not None:
                    self._shared.keep(outcome.samples)
            except Exception:  # a detector bug must not stop ingest or the daemon
                self._metrics.errors.labels("batch").inc()
                log.exception("detector_batch_failed", size=len(batch))
            self.processed += len(batch)
            self._inflight = 0

    async def _measure_cost(self) -> None:
        """Before the first batch: the embedder's CPU per text on made-up texts (its first
        call, which warms a model up, untimed), so the budget starts from this embedder's
        cost rather than a guess; live batches refine it."""
        try:
            cpu_s = await self._thread.call(_time_embedding, self._embedder)
            self._budget.observe(cpu_s, len(_WARM_UP) - 4)
        except Exception:  # the live batches will measure it, from the guess
            log.warning("detector_cost_unmeasured", exc_info=True)
        # Nothing was taken before: a whole interval's worth from now on.
        self._sampler.set_texts_per_s(self._budget.texts_per_s(), self._adapt_interval_s, now=True)

    def _process(self, batch: list[QueuedText]) -> tuple[BatchOutcome, float]:
        """On the detection thread: embed, then score or collect each track's texts; with
        the thread's CPU seconds for it (the budget's measure, not a clock)."""
        started = time.thread_time()
        embeddings = self._embeddings.embed([item.text for item in batch])
        return self._tracks.process(batch, embeddings), time.thread_time() - started

    async def _adapt_forever(self) -> None:
        while True:
            await asyncio.sleep(self._adapt_interval_s)
            self.adapt()

    def adapt(self) -> None:
        """Once an interval: the sampler backs off while the embedder falls behind (queue half
        full, or texts dropped) and recovers once it keeps up; budget shares move with demand;
        each app's effective rate (what was really sampled) goes to the gauge."""
        depth = len(self._queue) + self._inflight  # a stuck batch is work not done
        texts_per_s = self._budget.texts_per_s()  # the next interval's, shared by tick()
        self._sampler.set_texts_per_s(texts_per_s, self._adapt_interval_s)
        rates = self._sampler.tick(
            behind=bool(self._dropped_since_adapt) or depth > self._queue_size // 2,
            keeping_up=depth < self._queue_size // 10,
        )
        self._dropped_since_adapt = 0
        self._metrics.budget_texts_per_s.set(texts_per_s)
        self._metrics.cpu_per_text_s.set(self._budget.cost_per_text_s)
        for app, rate in rates.items():
            self._metrics.sample_rate.labels(app).set(rate)
        self._metrics.queue_depth.set(depth)

    # -- readers (event loop) -----------------------------------------------------------------

    def series(self, window_s: float, now: float) -> list[DetectorSeries]:
        """In a cluster, from the node that scores drift on everyone's texts only (the
        others' would be their share: rules, rollups and /metrics must not mix them in)."""
        if self._shared is not None and not self._shared.scores_drift:
            return []
        return detector_series(self._tracks.values(), window_s, now)

    def status(self, window_s: float, now: float) -> list[dict[str, Any]]:
        return detector_status(self._tracks.values(), window_s, now, self._tracks.reference_size)

    async def wait_idle(self) -> None:
        """For tests and replay: until everything queued has been processed and every
        reference fit it asked for is in use."""
        fits_done = self._references.fits_done
        while not (self._idle.is_set() and fits_done.is_set()):
            await self._idle.wait()
            await fits_done.wait()


def _sampling(
    cfg: DetectorsConfig, warm_up: bool, interval_s: float, slots: AppSlots
) -> tuple[CpuBudget, Sampler]:
    budget = CpuBudget(cfg.max_cpu_share, cfg.max_texts_per_s)
    sampler = Sampler(
        rate=cfg.sample_rate,
        app_rates=cfg.sample_rates,
        texts_per_s=0.0 if warm_up else budget.texts_per_s(),  # none before timed
        interval_s=interval_s,
        slots=slots,
    )
    return budget, sampler


def _time_embedding(embedder: Embedder) -> float:
    embedder.embed(_WARM_UP[:4])
    started = time.thread_time()
    embedder.embed(_WARM_UP[4:])
    return time.thread_time() - started
