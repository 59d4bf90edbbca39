"""The detectors' references, on the event loop: loads references that are new or newly
activated (`lookout baseline ...`) from the reference store, fits a reference from an app's
first texts (in a child process, calibration.py) and saves it, and checkpoints the drift
windows and OOD counts so a restart resumes them.

All of its I/O is awaited here, on the loop; the detection thread is only handed work (install
this reference, snapshot those windows), so a slow store never holds up scoring."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from typing import TYPE_CHECKING

import structlog

from lookout.detectors.errors import DetectorError
from lookout.detectors.reference import FittedReference
from lookout.errors import StoreError
from lookout.monitor.detection.calibration import ReferenceFitter

if TYPE_CHECKING:
    from lookout.clock import Clock
    from lookout.detectors.reference import DetectorParams
    from lookout.monitor.detection.handoff import FitRequest
    from lookout.monitor.detection.metrics import DetectionMetrics
    from lookout.monitor.detection.thread import DetectionThread
    from lookout.monitor.detection.tracks import TrackTable
    from lookout.monitor.storage.references import Reference, References

log = structlog.get_logger(__name__)


class ReferenceManager:
    def __init__(
        self,
        *,
        store: References | None,
        tracks: TrackTable,
        thread: DetectionThread,
        embedder_name: str,
        params: DetectorParams,
        clock: Clock,
        metrics: DetectionMetrics,
        max_window_s: float,
        poll_interval_s: float,
        checkpoint_interval_s: float,
    ) -> None:
        self._store = store
        self._tracks = tracks
        self._thread = thread
        self._embedder_name = embedder_name
        self._params = params
        self._clock = clock
        self._metrics = metrics
        self._max_window_s = max_window_s
        self._poll_interval_s = poll_interval_s
        self._checkpoint_interval_s = checkpoint_interval_s
        self._fitter = ReferenceFitter()
        self._requests: asyncio.Queue[FitRequest] = asyncio.Queue()
        self._fits_in_flight = 0
        self.fits_done = asyncio.Event()  # set while no fit is requested or under way
        self.fits_done.set()
        # Loading a reference and installing a fitted one take turns: each checks the track
        # before it installs.
        self._installing = asyncio.Lock()
        self._refused: set[int] = set()  # references made by another embedder
        # In a cluster, only the node that scores drift saves the windows (shared_drift.py).
        self.checkpoints = True

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._poll_forever(), name="detector-references")
            tg.create_task(self._fit_forever(), name="detector-fits")
            tg.create_task(self._checkpoint_forever(), name="detector-checkpoint")

    async def close(self, drain_timeout_s: float) -> None:
        """Kill a fit under way, then save every window as of now (within the drain time)."""
        await asyncio.to_thread(self._fitter.close)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_timeout_s):
                await self.save_windows()

    # -- references ----------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval_s)
            try:
                await self.load_active()
            except Exception:
                self._metrics.errors.labels("reference").inc()
                log.exception("reference_load_failed")

    async def load_active(self) -> None:
        """Load references that are new or newly activated."""
        if self._store is None:
            return
        for (app, field), ref_id in (await self._store.active_ids()).items():
            track = self._tracks.get(app, field)
            if (track is not None and track.ref_id == ref_id) or ref_id in self._refused:
                continue
            reference = await self._store.load(ref_id)
            if reference is None or not self._usable(reference):
                continue
            try:
                fitted = await self._thread.call(FittedReference.from_states, reference.states)
            except (DetectorError, KeyError, ValueError) as exc:
                log.error("reference_unusable", app=app, field=field, id=ref_id, error=str(exc))
                continue
            async with self._installing:
                await self._thread.call(
                    self._tracks.install, app, field, fitted, ref_id, reference.texts
                )
            version = reference.info.version
            log.info("reference_loaded", app=app, field=field, id=ref_id, version=version)

    def _usable(self, reference: Reference) -> bool:
        if reference.info.embedder == self._embedder_name:
            return True
        # Its rows come from another embedding function: scores against it would be
        # meaningless. The app's next texts build a reference with this embedder.
        self._refused.add(reference.info.id)
        self._metrics.errors.labels("reference").inc()
        log.warning(
            "reference_embedder_mismatch",
            app=reference.info.app,
            field=reference.info.field,
            id=reference.info.id,
            reference_embedder=reference.info.embedder,
            embedder=self._embedder_name,
        )
        return False

    # -- references fitted from an app's first texts -------------------------------------------

    def request_fit(self, request: FitRequest) -> None:
        self._fits_in_flight += 1
        self.fits_done.clear()
        self._requests.put_nowait(request)

    async def _fit_forever(self) -> None:
        while True:
            request = await self._requests.get()
            try:
                await self._fit(request)
            except Exception:  # a bug here must not stop detection, nor leave the track stuck
                self._metrics.errors.labels("reference").inc()
                log.exception("reference_build_failed", app=request.app, field=request.field)
                await self._thread.call(self._tracks.fit_abandoned, request.app, request.field)
            finally:
                self._fits_in_flight -= 1  # last: wait_idle() then sees the reference in use
                if not self._fits_in_flight:
                    self.fits_done.set()

    async def _fit(self, request: FitRequest) -> None:
        app, field = request.app, request.field
        started = self._clock.monotonic()
        try:
            # In a child process, while the detection thread goes on with every other track.
            fitting = self._fitter.submit(request.embeddings, self._params)
            fitted = await asyncio.wrap_future(fitting)
        except (DetectorError, ValueError, FloatingPointError) as exc:
            await self._thread.call(self._tracks.fit_abandoned, app, field)
            self._metrics.errors.labels("reference").inc()
            log.error("reference_build_failed", app=app, field=field, error=str(exc))
            return
        async with self._installing:
            if not self._tracks.fits_references or await self._thread.call(
                self._tracks.has_reference, app, field
            ):
                # A reference was activated meanwhile: it wins. Or, in a cluster, this node
                # lost the REFERENCES role: the new holder fits one.
                await self._thread.call(self._tracks.fit_abandoned, app, field)
                return
            seconds = round(self._clock.monotonic() - started, 2)
            size = len(request.texts)
            log.info("reference_built", app=app, field=field, size=size, seconds=seconds)
            ref_id = await self._save(request, fitted)
            await self._thread.call(self._tracks.install, app, field, fitted, ref_id, request.texts)

    async def _save(self, request: FitRequest, fitted: FittedReference) -> int | None:
        if self._store is None:
            return None
        try:
            info = await self._store.save(
                app=request.app,
                field=request.field,
                source="auto",
                embedder=self._embedder_name,
                size=len(request.texts),
                states=fitted.states(),
                texts=request.texts,
                now=self._clock.now(),
                drift_threshold=fitted.drift.threshold,
                ood_threshold=fitted.ood.threshold,
            )
        except (sqlite3.Error, StoreError) as exc:  # used unsaved: a restart builds it again
            self._metrics.errors.labels("reference").inc()
            log.warning("reference_not_saved", app=request.app, field=request.field, error=str(exc))
            return None
        return info.id

    # -- drift windows and OOD counts ----------------------------------------------------------

    async def _checkpoint_forever(self) -> None:
        """The windows of tracks that changed, every interval: a crash (kill -9, power loss)
        then loses at most one interval of them."""
        while True:
            await asyncio.sleep(self._checkpoint_interval_s)
            try:
                await self.save_windows(only_changed=True)
            except Exception:
                self._metrics.errors.labels("checkpoint").inc()
                log.exception("drift_windows_checkpoint_failed")

    async def save_windows(self, *, only_changed: bool = False) -> None:
        """The drift windows and OOD counts, so a restart does not start them empty (and a
        drift alert does not resolve on the restart's silence, then fire again once the window
        refills). On stop all of them, saved as of now; at a checkpoint the changed ones."""
        if self._store is None or not self.checkpoints:
            return
        # On the detection thread, after any batch still there: the windows are its.
        windows = await self._thread.call(self._tracks.snapshot_windows, only_changed)
        if not windows:
            return
        try:
            await self._store.save_windows(windows, self._clock.now())
        except (sqlite3.Error, StoreError) as exc:
            self._metrics.errors.labels("checkpoint").inc()
            log.warning("drift_windows_not_saved", error=str(exc))

    async def restore_windows(self) -> None:
        if self._store is None:
            return
        saved = await self._store.load_windows(self._clock.now() - self._max_window_s)
        for snapshot in saved:
            await self._thread.call(self._tracks.restore_window, snapshot)
