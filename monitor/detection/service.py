"""Drift and OOD detection beside ingest: sample records, embed them off the event loop, and
keep per (app, field) drift windows and OOD counts that rules, /metrics and the status read.

The hot path only appends to a bounded queue (`offer`); one worker thread owns every detector
and embeds in batches, so a slow embedder can never block ingest: the queue fills, the sampler
lowers its rate on its own, and what still does not fit is dropped and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import sqlite3
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge

from lookout.detectors.errors import DetectorError
from lookout.detectors.reference import DetectorParams, FittedReference
from lookout.monitor.detection.calibration import ReferenceFitter
from lookout.monitor.detection.sampler import Sampler
from lookout.monitor.detection.state import BUCKET_S, DetectorSeries, Track
from lookout.monitor.storage.references import WindowSnapshot

if TYPE_CHECKING:
    from types import TracebackType

    from numpy.typing import NDArray

    from lookout.clock import Clock
    from lookout.detectors.embedders import Embedder
    from lookout.monitor.config import DetectorsConfig
    from lookout.monitor.ingest.records import Record
    from lookout.monitor.storage import Store
    from lookout.monitor.storage.references import ReferenceBook

log = structlog.get_logger(__name__)
_BATCH = 256
_MAX_TEXT_CHARS = 2000  # embedders see the head of long texts
_KEEP_TEXT_CHARS = 300  # kept for explanations


@dataclass(frozen=True, slots=True)
class _Item:
    app: str
    field: str
    text: str
    at: float
    record: Record
    stored_id: str | None  # the id the store keeps the record under, if it was sampled
    cost: float


class DetectionService:
    def __init__(
        self,
        cfg: DetectorsConfig,
        *,
        embedder: Embedder,
        book: ReferenceBook | None,
        clock: Clock,
        store: Store | None = None,
        publish: Callable[[str, bytes], bool] | None = None,
        registry: CollectorRegistry,
        poll_interval_s: float = 10.0,
        queue_size: int = 10_000,
        max_window_s: float = 3600.0,
        max_tracks: int = 200,
        adapt_interval_s: float = 1.0,
        drain_timeout_s: float = 2.0,
        checkpoint_interval_s: float = 60.0,
    ) -> None:
        self._cfg = cfg
        self._fields = tuple(cfg.fields)
        self._prompts, self._responses = "prompt" in self._fields, "response" in self._fields
        self._params = DetectorParams(
            drift_window=cfg.drift.window, drift_ert=cfg.drift.ert, ood_fpr=cfg.ood.fpr
        )
        self._auto_size = max(cfg.reference.auto_size, self._params.min_reference())
        self._embedder = embedder
        self._book = book
        self._store = store
        self._publish = publish if cfg.ood.output_topic else None
        self._clock = clock
        self._poll_interval_s = poll_interval_s
        self._queue: deque[_Item] = deque()
        self._queue_size = queue_size
        self._buckets = int(max_window_s // BUCKET_S) + 2
        self._max_window_s = max_window_s
        self._max_tracks = max_tracks
        self._tracks: dict[tuple[str, str], Track] = {}
        self._refused: set[int] = set()  # references made by another embedder
        self._cache: OrderedDict[bytes, NDArray[np.float32]] = OrderedDict()
        self._cache_size = 4096  # ~4 MB of rows at 256-d
        self._sampler = Sampler(
            rate=cfg.sample_rate,
            app_rates=cfg.sample_rates,
            texts_per_s=cfg.max_texts_per_s,
            interval_s=adapt_interval_s,
            max_apps=max_tracks,
        )
        self._adapt_interval_s = adapt_interval_s
        self._drain_timeout_s = drain_timeout_s
        self._checkpoint_interval_s = checkpoint_interval_s
        self._dropped_since_adapt = 0
        self._inflight = 0
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookout-detect")
        self._fitter = ReferenceFitter()
        self._fits_in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.processed = 0
        self.idle = asyncio.Event()  # set whenever the queue has been worked off
        m = registry
        self._m_dropped = Counter(
            "lookout_detector_dropped",
            "Sampled texts dropped: the detection queue was full",
            registry=m,
        )
        self._m_rate = Gauge(
            "lookout_detector_sample_rate",
            "Effective share of an app's records embedded (lowered automatically under load)",
            ["app"],
            registry=m,
        )
        self._m_texts = Counter("lookout_embedded_texts", "Texts embedded", registry=m)
        self._m_cache = Counter(
            "lookout_embed_cache_hits", "Texts served from the cache", registry=m
        )
        self._m_seconds = Counter("lookout_embed_seconds", "Seconds spent embedding", registry=m)
        self._m_errors = Counter(
            "lookout_detector_errors", "Detector batches that failed", ["stage"], registry=m
        )
        self._m_queue = Gauge(
            "lookout_detector_queue_depth", "Texts waiting to be embedded", registry=m
        )
        self._m_out_dropped = Counter(
            "lookout_ood_output_dropped", "OOD flags not published: the bus was down", registry=m
        )

    # -- the hot path -------------------------------------------------------------------------

    def offer(
        self, record: Record, now: float, stored_id: str | None = None, cost: float = 0.0
    ) -> None:
        """Maybe queue the record's texts for embedding: errors always, others by the app's
        rate and within its share of the CPU budget (`max_texts_per_s`), whatever the ingest
        rate (monitor/sampler.py)."""
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
                self._m_dropped.inc()
                self._dropped_since_adapt += 1
                continue
            self._queue.append(
                _Item(record.app, field, text[:_MAX_TEXT_CHARS], now, record, stored_id, cost)
            )
            self.idle.clear()
        self._wake.set()

    # -- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> DetectionService:
        self._loop = asyncio.get_running_loop()
        await self._poll_references()  # saved references first: a restart never recalibrates
        await self._restore_windows()  # and drift goes on from where it stopped
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._tasks = [
            self._group.create_task(self._work(), name="detector-worker"),
            self._group.create_task(self._poll_forever(), name="detector-references"),
            self._group.create_task(self._adapt_forever(), name="detector-sampler"),
            self._group.create_task(self._checkpoint_forever(), name="detector-checkpoint"),
        ]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        if self._group is not None:
            await self._group.__aexit__(exc_type, exc, tb)
        await asyncio.to_thread(self._fitter.close)  # kills a fit under way
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._save_windows(), self._drain_timeout_s)
        # Off the loop: a batch still on the detection thread may need the loop to save a
        # reference it just built. Bounded: past the drain time, the stop goes on without it.
        shutdown = functools.partial(self._executor.shutdown, wait=True, cancel_futures=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(shutdown), self._drain_timeout_s)

    async def _checkpoint_forever(self) -> None:
        """The windows of tracks that changed, every interval: a crash (kill -9, power loss)
        then loses at most one interval of them."""
        while True:
            await asyncio.sleep(self._checkpoint_interval_s)
            try:
                await self._save_windows(only_changed=True)
            except Exception:
                self._m_errors.labels("checkpoint").inc()
                log.exception("drift_windows_checkpoint_failed")

    async def _save_windows(self, *, only_changed: bool = False) -> None:
        """The drift windows and OOD counts, so a restart does not start them empty (and a
        drift alert does not resolve on the restart's silence, then fire again once the window
        refills). On stop all of them, saved as of now; at a checkpoint the changed ones."""
        if self._book is None:
            return
        loop = asyncio.get_running_loop()
        # On the detection thread, after any batch still there: the windows are its.
        windows = await loop.run_in_executor(self._executor, self._snapshot_windows, only_changed)
        if not windows:
            return
        try:
            await self._book.save_windows(windows, self._clock.now())
        except sqlite3.Error as exc:
            self._m_errors.labels("checkpoint").inc()
            log.warning("drift_windows_not_saved", error=str(exc))

    def _snapshot_windows(self, only_changed: bool) -> list[WindowSnapshot]:
        out = []
        for t in self._tracks.values():
            if t.window is None or t.ref_id is None or (only_changed and not t.changed):
                continue
            t.changed = False
            ood = t.ood_rows()
            if t.window.count or len(ood):
                out.append(
                    WindowSnapshot(
                        t.app, t.field, t.ref_id, t.window.embeddings(), list(t.recent_texts), ood
                    )
                )
        return out

    async def _restore_windows(self) -> None:
        if self._book is None:
            return
        loop = asyncio.get_running_loop()
        saved = await self._book.load_windows(self._clock.now() - self._max_window_s)
        for snapshot in saved:
            await loop.run_in_executor(self._executor, self._restore_window, snapshot)

    def _restore_window(self, snapshot: WindowSnapshot) -> None:
        track = self._tracks.get((snapshot.app, snapshot.field))
        if track is None or track.ref_id != snapshot.ref_id or track.window is None:
            return  # the reference changed since: the old window does not fit it
        assert track.fitted is not None
        track.restore_ood(snapshot.ood)
        if len(snapshot.embeddings):
            track.window.add(snapshot.embeddings)
            track.recent_texts.extend(snapshot.texts)
            track.last = track.fitted.drift.score(track.window)
        log.info(
            "drift_window_restored",
            app=track.app,
            field=track.field,
            size=int(track.window.count),
            ood_buckets=len(snapshot.ood),
        )

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self.idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = [self._queue.popleft() for _ in range(min(_BATCH, len(self._queue)))]
            self._inflight = len(batch)
            try:
                await loop.run_in_executor(self._executor, self._process, batch)
            except Exception:  # a detector bug must not stop ingest or the daemon
                self._m_errors.labels("batch").inc()
                log.exception("detector_batch_failed", size=len(batch))
            self.processed += len(batch)
            self._inflight = 0

    async def _adapt_forever(self) -> None:
        while True:
            await asyncio.sleep(self._adapt_interval_s)
            self.adapt()

    def adapt(self) -> None:
        """Once an interval: the sampler backs off while the embedder falls behind (queue half
        full, or texts dropped) and recovers once it keeps up; budget shares move with demand;
        each app's effective rate (what was really sampled) goes to the gauge."""
        depth = len(self._queue) + self._inflight  # a stuck batch is work not done
        rates = self._sampler.tick(
            behind=bool(self._dropped_since_adapt) or depth > self._queue_size // 2,
            keeping_up=depth < self._queue_size // 10,
        )
        self._dropped_since_adapt = 0
        for app, rate in rates.items():
            self._m_rate.labels(app).set(rate)
        self._m_queue.set(depth)

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self._poll_references()
            except Exception:
                self._m_errors.labels("reference").inc()
                log.exception("reference_load_failed")

    async def _poll_references(self) -> None:
        """Load references that are new or newly activated (`lookout baseline ...`)."""
        if self._book is None:
            return
        loop = asyncio.get_running_loop()
        for (app, field), ref_id in (await self._book.active_ids()).items():
            track = self._tracks.get((app, field))
            if (track is not None and track.ref_id == ref_id) or ref_id in self._refused:
                continue
            reference = await self._book.load(ref_id)
            if reference is None:
                continue
            if reference.info.embedder != self._embedder.name:
                # Its rows come from another embedding function: scores against it would be
                # meaningless. The app's next texts build a reference with this embedder.
                self._refused.add(ref_id)
                self._m_errors.labels("reference").inc()
                log.warning(
                    "reference_embedder_mismatch",
                    app=app,
                    field=field,
                    id=ref_id,
                    reference_embedder=reference.info.embedder,
                    embedder=self._embedder.name,
                )
                continue
            try:
                fitted = await loop.run_in_executor(
                    self._executor, FittedReference.from_states, reference.states
                )
            except (DetectorError, KeyError, ValueError) as exc:
                log.error("reference_unusable", app=app, field=field, id=ref_id, error=str(exc))
                continue
            await loop.run_in_executor(
                self._executor, self._install, app, field, fitted, ref_id, reference.texts
            )
            log.info(
                "reference_loaded", app=app, field=field, id=ref_id, version=reference.info.version
            )

    # -- the detection thread -----------------------------------------------------------------

    def _track(self, app: str, field: str) -> Track | None:
        track = self._tracks.get((app, field))
        if track is None:
            if len(self._tracks) >= self._max_tracks:
                return None
            track = self._tracks[(app, field)] = Track(app, field, self._buckets)
        return track

    def _install(
        self, app: str, field: str, fitted: FittedReference, ref_id: int | None, texts: list[str]
    ) -> None:
        track = self._track(app, field)
        if track is not None:
            track.use(fitted, ref_id, texts)

    def _embed(self, texts: list[str]) -> NDArray[np.float32]:
        """Embeddings of `texts`, each distinct text embedded once; an LRU cache by hash."""
        keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
        rows: dict[bytes, NDArray[np.float32]] = {}
        todo: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                rows[key] = cached
            else:
                todo.setdefault(key, text)
        if todo:
            started = self._clock.monotonic()
            try:
                fresh = self._embedder.embed(list(todo.values()))
            except Exception:
                self._m_errors.labels("embed").inc()
                raise
            self._m_seconds.inc(max(self._clock.monotonic() - started, 0.0))
            self._m_texts.inc(len(todo))
            for key, row in zip(todo, fresh, strict=True):
                rows[key] = self._cache[key] = row
                if len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        self._m_cache.inc(len(texts) - len(todo))
        return np.stack([rows[k] for k in keys])

    def _process(self, batch: list[_Item]) -> None:
        embeddings = self._embed([item.text for item in batch])
        groups: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault((item.app, item.field), []).append(i)
        scored: list[tuple[_Item, float, bool]] = []
        for (app, field), rows in groups.items():
            track = self._track(app, field)
            if track is None:
                continue
            x = embeddings[rows]
            items = [batch[i] for i in rows]
            if track.fitted is None:
                if not track.fitting:  # texts arriving while it fits are not needed
                    self._collect(track, x, [i.text[:_KEEP_TEXT_CHARS] for i in items])
            else:
                scored.extend(self._detect(track, x, items))
        if scored and self._store is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self._keep_scores, scored)

    def _keep_scores(self, scored: list[tuple[_Item, float, bool]]) -> None:
        """On the loop (the store's buffers are the loop's): scores onto stored records, and
        records flagged out-of-distribution kept even when the store's sample skipped them."""
        assert self._store is not None
        rows = []
        kept: dict[int, str | None] = {}
        for item, score, flagged in scored:
            record_id = item.stored_id
            if record_id is None:
                if not flagged:
                    continue
                key = id(item.record)  # both fields of one record: one row
                if key not in kept:
                    kept[key] = self._store.put_record(item.record, item.cost)
                record_id = kept[key]
                if record_id is None:
                    continue
            flags = {"ood": {item.field: {"score": score, "flagged": flagged}}}
            rows.append((record_id, score, json.dumps(flags)))
            if flagged and self._publish is not None:
                self._announce(item, record_id, score)
        self._store.put_scores(rows)

    def _announce(self, item: _Item, record_id: str, score: float) -> None:
        assert self._publish is not None and self._cfg.ood.output_topic is not None
        topic = self._cfg.ood.output_topic.replace("{app}", item.app).replace("{field}", item.field)
        body = {
            "id": record_id,
            "app": item.app,
            "model": item.record.model,
            "field": item.field,
            "ood_score": score,
            "flagged": True,
            "ts": item.record.ts,
        }
        if not self._publish(topic, json.dumps(body).encode()):
            self._m_out_dropped.inc()

    def _collect(self, track: Track, x: NDArray[np.float32], texts: list[str]) -> None:
        """Gather the first records of an app as its reference; fit once there are enough."""
        track.pending.append(x)
        track.pending_texts.extend(texts)
        if len(track.pending_texts) < self._auto_size:
            return
        reference = np.concatenate(track.pending)[: self._auto_size]
        ref_texts = track.pending_texts[: self._auto_size]
        track.pending, track.pending_texts, track.fitting = [], [], True
        self._fits_in_flight += 1
        started = self._clock.monotonic()
        # In a child process, while this thread goes on with every other track.
        future = self._fitter.submit(reference, self._params)

        def fitted(done: Future[FittedReference]) -> None:
            with contextlib.suppress(RuntimeError):  # the detection thread has stopped
                self._executor.submit(self._fitted, track, done, ref_texts, started)

        future.add_done_callback(fitted)

    def _fitted(
        self, track: Track, done: Future[FittedReference], ref_texts: list[str], started: float
    ) -> None:
        """On the detection thread, once a track's reference is fitted (or failed)."""
        try:
            self._use_fitted(track, done, ref_texts, started)
        finally:
            self._fits_in_flight -= 1  # last: wait_idle() then sees the reference in use

    def _use_fitted(
        self, track: Track, done: Future[FittedReference], ref_texts: list[str], started: float
    ) -> None:
        try:
            fitted = done.result()
        except (DetectorError, ValueError, FloatingPointError, CancelledError) as exc:
            # Start over with fresh texts rather than retry the same ones.
            track.fitting = False
            self._m_errors.labels("reference").inc()
            log.error("reference_build_failed", app=track.app, field=track.field, error=str(exc))
            return
        if track.fitted is not None:  # a reference was activated meanwhile: it wins
            track.fitting = False
            return
        size = len(ref_texts)
        log.info(
            "reference_built",
            app=track.app,
            field=track.field,
            size=size,
            seconds=round(self._clock.monotonic() - started, 2),
        )
        ref_id = None
        if self._book is not None and self._loop is not None:
            saving = self._book.save(
                app=track.app,
                field=track.field,
                source="auto",
                embedder=self._embedder.name,
                size=size,
                states=fitted.states(),
                texts=ref_texts,
                now=self._clock.now(),
                drift_threshold=fitted.drift.threshold,
                ood_threshold=fitted.ood.threshold,
            )
            try:
                future = asyncio.run_coroutine_threadsafe(saving, self._loop)
                ref_id = future.result(timeout=30).id
            except (TimeoutError, RuntimeError) as exc:  # the daemon is stopping
                log.warning(
                    "reference_not_saved",
                    app=track.app,
                    field=track.field,
                    error=type(exc).__name__,
                )
        track.use(fitted, ref_id, ref_texts)
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._wake.set)

    def _detect(
        self, track: Track, x: NDArray[np.float32], items: list[_Item]
    ) -> list[tuple[_Item, float, bool]]:
        assert track.fitted is not None and track.window is not None
        ood = track.fitted.ood.score(x)
        track.count_ood(items[-1].at, len(x), int(ood.flagged.sum()))
        track.changed = True
        track.window.add(x)
        track.recent_texts.extend(i.text[:_KEEP_TEXT_CHARS] for i in items)
        before = track.last
        track.last = result = track.fitted.drift.score(track.window)
        if result.drifted and not (before is not None and before.drifted):
            why = track.fitted.drift.explain(track.window)
            recent = list(track.recent_texts)
            track.explanation = {
                "reference_least_like_recent": [
                    track.ref_texts[i]
                    for i in why.reference_least_like_window
                    if i < len(track.ref_texts)
                ],
                "recent_farthest_from_reference": [
                    recent[i] for i in why.window_farthest_from_reference if i < len(recent)
                ],
            }
            # Counts and scores only: texts may hold personal data and stay in the API.
            log.warning(
                "drift_detected",
                app=track.app,
                field=track.field,
                drift_score=round(result.drift_score or 0.0, 3),
            )
        elif before is not None and before.drifted and not result.drifted:
            log.info("drift_ended", app=track.app, field=track.field)
        flags = zip(items, ood.scores, ood.flagged, strict=True)
        return [(item, float(score), bool(flag)) for item, score, flag in flags]

    # -- readers (event loop) -----------------------------------------------------------------

    def series(self, window_s: float, now: float) -> list[DetectorSeries]:
        out = []
        for track in list(self._tracks.values()):
            last = track.last
            if track.fitted is None:
                continue
            count = last.count if last is not None else 0
            drift = last.drift_score if last is not None else None
            out.append(DetectorSeries(track.app, track.field, "drift_score", drift, count))
            statistic = last.score if last is not None else None
            out.append(DetectorSeries(track.app, track.field, "drift_statistic", statistic, count))
            threshold = track.fitted.drift.threshold
            out.append(DetectorSeries(track.app, track.field, "drift_threshold", threshold, count))
            rate, scored = track.ood_rate(window_s, now)
            out.append(DetectorSeries(track.app, track.field, "ood_rate", rate, scored))
        return out

    def status(self, window_s: float, now: float) -> list[dict[str, Any]]:
        listed = []
        for track in list(self._tracks.values()):
            last = track.last
            entry: dict[str, Any] = {
                "app": track.app,
                "field": track.field,
                "reference_id": track.ref_id,
                "reference_pending": None if track.fitted else len(track.pending_texts),
                "reference_size_needed": self._auto_size,
            }
            if track.fitted is not None:
                rate, scored = track.ood_rate(window_s, now)
                entry.update(
                    {
                        "drift_score": None if last is None else last.drift_score,
                        "drift_statistic": None if last is None else last.score,
                        "drift_threshold": track.fitted.drift.threshold,
                        "drifted": bool(last is not None and last.drifted),
                        "window_count": 0 if last is None else last.count,
                        "ood_threshold": track.fitted.ood.threshold,
                        "ood_rate": rate,
                        "ood_scored": scored,
                        "explanation": track.explanation,
                    }
                )
            listed.append(entry)
        return sorted(listed, key=lambda e: (e["app"], e["field"]))

    async def wait_idle(self) -> None:
        """For tests and replay: until everything queued has been processed."""
        while self._queue or not self.idle.is_set() or self._fits_in_flight:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), 0.5)
