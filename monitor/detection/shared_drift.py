"""Drift on a cluster's traffic (docs/scale-out.md "Drift and OOD across nodes"): every node
commits the embeddings it sampled (float16, per (app, field) and batch) to a bounded table;
the node holding the ALERTS role, whose rule evaluator reads the drift series, feeds the
other nodes' rows into its drift windows and OOD counts beside its own, and it alone reports
drift. Every node scores OOD on the records it got. Only the REFERENCES holder collects texts
towards a new reference and fits it; the others load it when it is saved.

Bounded throughout: the rows waiting to be committed (`max_pending_texts`), each node's rows
in the table (pruned by age and to its newest `keep_texts` per (app, field)), and the rows
read at once (`max_rows_per_read`); whatever is dropped is counted
(`lookout_drift_samples_dropped_total{reason}`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import structlog
from prometheus_client import CollectorRegistry, Counter

from lookout.errors import StoreError

if TYPE_CHECKING:
    from lookout.clock import Clock
    from lookout.monitor.detection.reference_manager import ReferenceManager
    from lookout.monitor.detection.thread import DetectionThread
    from lookout.monitor.detection.tracks import TrackTable
    from lookout.monitor.storage.drift_samples import DriftSample, DriftSamples

log = structlog.get_logger(__name__)
_PRUNE_EVERY_S = 60.0
_PUT_WAIT_S = 5.0  # on stop, for a commit of samples under way


class Gate(Protocol):
    """A role as leadership.py's RoleGate shows it."""

    held: bool
    term: int

    async def wait_held(self) -> None: ...

    async def wait_change(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ClusterDetection:
    """What the detectors need to share drift with the other nodes."""

    node: str
    samples: DriftSamples
    drift: Gate  # Role.ALERTS: where the rules read the drift series
    references: Gate  # Role.REFERENCES: who fits references
    flush_interval_s: float = 1.0
    read_interval_s: float = 1.0
    max_pending_texts: int = 20_000
    max_rows_per_read: int = 64
    keep_texts: int = 2_000  # per (app, field) and node in the table (at least a window)
    max_age_s: float = 3600.0


@dataclass(frozen=True, slots=True)
class _Metrics:
    shipped: Counter
    peers: Counter
    dropped: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry) -> _Metrics:
        return cls(
            Counter(
                "lookout_drift_samples_shipped",
                "Embedded texts this node committed for the cluster's drift windows",
                registry=registry,
            ),
            Counter(
                "lookout_drift_samples_read",
                "Other nodes' embedded texts fed to this node's drift windows",
                registry=registry,
            ),
            Counter(
                "lookout_drift_samples_dropped",
                "Embedded texts not shared: buffer_full, write_failed, reference_changed"
                " (scored against another reference version than this node's, or none here yet)",
                ["reason"],
                registry=registry,
            ),
        )


class SharedDrift:
    def __init__(  # noqa: PLR0917 - the detection service's parts it works with
        self,
        cfg: ClusterDetection,
        tracks: TrackTable,
        thread: DetectionThread,
        references: ReferenceManager,
        window: int,
        clock: Clock,
        registry: CollectorRegistry,
    ) -> None:
        """`window`: the drift window's size, in texts."""
        self._cfg, self._window = cfg, window
        self._tracks, self._thread, self._references = tracks, thread, references
        self._clock = clock
        self._metrics = _Metrics.create(registry)
        self._pending: list[DriftSample] = []
        self._pending_texts = 0
        self._flushing = asyncio.Lock()
        self._cursors: dict[str, int] = {}
        self._floor = 0
        self._taken_over = -1  # the drift role's term whose take-over is done
        tracks.shares_as = cfg.node
        tracks.scores_drift = cfg.drift.held
        tracks.fits_references = cfg.references.held
        references.checkpoints = cfg.drift.held

    @property
    def scores_drift(self) -> bool:
        """Whether this node holds the drift and has taken it over (its windows rebuilt)."""
        return self._cfg.drift.held and self._taken_over == self._cfg.drift.term

    def keep(self, samples: list[DriftSample]) -> None:
        """A batch's samples, committed at the next flush (the loop's; never blocks)."""
        for s in samples:
            if self._pending_texts + s.n > self._cfg.max_pending_texts:
                self._metrics.dropped.labels("buffer_full").inc(s.n)
                continue
            self._pending.append(s)
            self._pending_texts += s.n

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._ship_forever(), name="drift-samples-ship")
            tg.create_task(self._follow_references(), name="drift-references-role")
            tg.create_task(self._follow_drift(), name="drift-samples-read")

    # -- this node's samples -------------------------------------------------------------------

    async def flush(self) -> None:
        async with self._flushing:
            batch, self._pending, self._pending_texts = self._pending, [], 0
            if not batch:
                return
            texts = sum(s.n for s in batch)
            put = asyncio.ensure_future(self._cfg.samples.put(batch))
            try:
                await asyncio.shield(put)
            except StoreError as exc:
                self._put_back(batch, texts)
                log.warning("drift_samples_not_committed", error=str(exc), texts=texts)
                return
            except asyncio.CancelledError:
                # Stopping: a put under way ends first, so that its rows are neither lost nor
                # committed twice (by the final flush).
                await asyncio.wait([put], timeout=_PUT_WAIT_S)
                if not put.done():
                    put.cancel()
                    self._put_back(batch, texts)
                elif put.cancelled() or put.exception() is not None:
                    self._put_back(batch, texts)
                else:
                    self._metrics.shipped.inc(texts)
                raise
            self._metrics.shipped.inc(texts)

    def _put_back(self, batch: list[DriftSample], texts: int) -> None:
        if self._pending_texts + texts <= self._cfg.max_pending_texts:
            self._pending[:0] = batch  # retried at the next flush
            self._pending_texts += texts
        else:
            self._metrics.dropped.labels("write_failed").inc(texts)

    async def _ship_forever(self) -> None:
        pruned_at = self._clock.monotonic()
        while True:
            await asyncio.sleep(self._cfg.flush_interval_s)
            await self.flush()
            if self._clock.monotonic() - pruned_at < _PRUNE_EVERY_S:
                continue
            pruned_at = self._clock.monotonic()
            before = self._clock.now() - self._cfg.max_age_s
            try:
                await self._cfg.samples.prune(before, self._cfg.keep_texts)
            except StoreError as exc:
                log.warning("drift_samples_prune_failed", error=str(exc))

    # -- roles ---------------------------------------------------------------------------------

    async def _follow_references(self) -> None:
        gate = self._cfg.references
        while True:
            self._tracks.fits_references = gate.held
            await gate.wait_change()

    async def _follow_drift(self) -> None:
        gate = self._cfg.drift
        while True:
            self._tracks.scores_drift = self._references.checkpoints = False
            await gate.wait_held()
            term = gate.term
            self._tracks.scores_drift = self._references.checkpoints = True
            try:
                await self._take_over()
            except Exception:  # the window goes on from this node's own texts meanwhile
                log.exception("drift_takeover_failed")
            self._taken_over = term
            while gate.held and gate.term == term:
                try:
                    await self._read()
                except Exception:
                    log.exception("drift_samples_read_failed")
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._cfg.read_interval_s):
                        await gate.wait_change()

    async def _take_over(self) -> None:
        """The previous holder's OOD counts (its checkpoint), then each drift window made
        anew from the cluster's latest samples (this node's unsent ones committed first)."""
        await self.flush()
        await self._references.restore_windows()
        rows = await self._cfg.samples.latest(self._window)
        self._cursors = {}
        self._floor = max((s.id for s in rows), default=0)
        by_track: dict[tuple[str, str, int], list[DriftSample]] = defaultdict(list)
        for s in rows:
            self._cursors[s.node] = max(self._cursors.get(s.node, 0), s.id)
            by_track[(s.app, s.field, s.ref_id)].append(s)
        for (app, field, ref_id), samples in by_track.items():
            x = np.concatenate([s.embeddings for s in samples]).astype(np.float32)
            nodes = [s.node for s in samples for _ in range(s.n)]
            await self._thread.call(self._tracks.rebuild_window, app, field, ref_id, x, nodes)
        log.info("drift_taken_over", tracks=len(by_track), texts=sum(s.n for s in rows))

    async def _read(self) -> None:
        """The other nodes' new samples, `max_rows_per_read` at a time, into the windows."""
        limit = self._cfg.max_rows_per_read
        while True:
            rows = await self._cfg.samples.after(self._cursors, self._floor, limit)
            if not rows:
                return
            for s in rows:
                self._cursors[s.node] = max(self._cursors.get(s.node, self._floor), s.id)
            dropped = await self._thread.call(self._tracks.add_peers, rows)
            self._metrics.peers.inc(sum(s.n for s in rows) - dropped)
            if dropped:
                self._metrics.dropped.labels("reference_changed").inc(dropped)
            if len(rows) < limit:
                return
