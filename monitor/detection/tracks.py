"""What the detection thread keeps per (app, field), and what one batch does to it: texts
collected towards a reference until there are enough to fit one, then each batch scored
(`score_batch`) and the result applied to the track.

Every method that changes a track runs on the detection thread only; the loop reads tracks
(`get`, `values`) whose fields it reads are written as single assignments."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import numpy as np
import structlog

from lookout.monitor.detection.handoff import BatchOutcome, FitRequest, ScoredText
from lookout.monitor.detection.sampler import AppSlots
from lookout.monitor.detection.scoring import BatchScores, score_batch
from lookout.monitor.storage.drift_samples import DriftSample
from lookout.monitor.storage.references import WindowSnapshot

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from lookout.detectors.arrays import F32
    from lookout.detectors.drift import DriftExplanation, DriftResult, DriftWindow
    from lookout.detectors.ood import OodResult
    from lookout.detectors.reference import FittedReference
    from lookout.monitor.detection.handoff import QueuedText

log = structlog.get_logger(__name__)
BUCKET_S = 10.0
KEEP_TEXT_CHARS = 300  # of each text, kept for explanations
# In a cluster's drift window, in place of a text another node embedded (it has the text).
PEER_TEXT = "(a text sampled on node {node})"


class Track:
    """One (app, field): its reference (or the texts collected towards one), drift window,
    last drift result and OOD counts by time bucket."""

    def __init__(self, app: str, field: str, buckets: int) -> None:
        self.app, self.field = app, field
        self.pending: list[F32] = []
        self.pending_texts: list[str] = []
        self.fitted: FittedReference | None = None
        self.fitting = False  # a reference from this track's first texts is being fitted
        self.window: DriftWindow | None = None
        self.ref_id: int | None = None
        self.ref_texts: list[str] = []
        self.recent_texts: deque[str] = deque()
        self.last: DriftResult | None = None
        self.explanation: dict[str, list[str]] | None = None
        self._ring = buckets
        self.ood_bucket = [-1] * buckets
        self.ood_scored = [0] * buckets
        self.ood_flagged = [0] * buckets
        self.changed = False  # since the last checkpoint of its window and OOD counts
        self.last_seen = 0.0  # time of the last text it was given

    def use(self, fitted: FittedReference, ref_id: int | None, texts: list[str]) -> None:
        self.fitted, self.ref_id, self.ref_texts = fitted, ref_id, texts
        self.fitting = False
        self.window = fitted.drift.new_window()
        self.recent_texts = deque(maxlen=fitted.drift.window)
        self.pending, self.pending_texts, self.last, self.explanation = [], [], None, None

    def count_ood(self, now: float, scored: int, flagged: int) -> None:
        index = int(now // BUCKET_S)
        slot = index % self._ring
        if self.ood_bucket[slot] != index:
            self.ood_scored[slot], self.ood_flagged[slot] = 0, 0
            self.ood_bucket[slot] = index
        self.ood_scored[slot] += scored
        self.ood_flagged[slot] += flagged

    def ood_rows(self) -> NDArray[np.int64]:
        """The OOD ring's live buckets as rows of (bucket index, scored, flagged)."""
        rows = [
            (b, n, f)
            for b, n, f in zip(self.ood_bucket, self.ood_scored, self.ood_flagged, strict=True)
            if b >= 0
        ]
        return np.array(rows, dtype=np.int64).reshape(-1, 3)

    def restore_ood(self, rows: NDArray[np.int64]) -> None:
        """Saved buckets back into the ring, where no newer bucket holds their slot."""
        for index, scored, flagged in rows.tolist():
            slot = index % self._ring
            if self.ood_bucket[slot] < index:
                self.ood_bucket[slot] = index
                self.ood_scored[slot], self.ood_flagged[slot] = scored, flagged

    def ood_rate(self, window_s: float, now: float) -> tuple[float | None, int]:
        first = int((now - window_s) // BUCKET_S) + 1
        last = int(now // BUCKET_S)
        scored = flagged = 0
        for slot in range(self._ring):
            if first <= self.ood_bucket[slot] <= last:
                scored += self.ood_scored[slot]
                flagged += self.ood_flagged[slot]
        return (flagged / scored if scored else None), scored


class TrackTable:
    def __init__(
        self,
        *,
        buckets: int,
        slots: AppSlots,
        reference_size: int,
    ) -> None:
        self._buckets = buckets
        self._max_tracks = slots.max_apps  # besides those of pinned apps
        self._pinned = slots.pinned
        self._reclaim_after_s = slots.reclaim_after_s
        self.reference_size = reference_size  # texts collected before a reference is fitted
        self._tracks: dict[tuple[str, str], Track] = {}
        # Until a batch hands them to the loop: a batch that fails after collecting a track's
        # reference texts must not leave that track waiting for a fit nobody asked for.
        self._fit_requests: list[FitRequest] = []
        # Set from the loop in a cluster (shared_drift.py), read here on the detection thread:
        # whether this node slides drift windows and fits references, and the node whose
        # embeddings it hands back to be shared (None: none shared).
        self.scores_drift = True
        self.fits_references = True
        self.shares_as: str | None = None

    # -- read anywhere -------------------------------------------------------------------------

    def get(self, app: str, field: str) -> Track | None:
        return self._tracks.get((app, field))

    def values(self) -> list[Track]:
        return list(self._tracks.values())

    # -- the detection thread only -------------------------------------------------------------

    def _track(self, app: str, field: str, now: float | None = None) -> Track | None:
        track = self._tracks.get((app, field))
        if track is None:
            if app not in self._pinned and not self._room(now):
                return None
            track = self._tracks[(app, field)] = Track(app, field, self._buckets)
        return track

    def _room(self, now: float | None) -> bool:
        """Whether an unpinned track fits, after reclaiming the least recently seen track
        without a reference that has been idle `reclaim_after_s` (apps flooded in once)."""
        unpinned = [t for t in self._tracks.values() if t.app not in self._pinned]
        if len(unpinned) < self._max_tracks:
            return True
        if now is None:
            return False
        idle = [
            t
            for t in unpinned
            if t.fitted is None and not t.fitting and t.last_seen < now - self._reclaim_after_s
        ]
        if not idle:
            return False
        oldest = min(idle, key=lambda t: t.last_seen)
        del self._tracks[(oldest.app, oldest.field)]
        return True

    def install(
        self, app: str, field: str, fitted: FittedReference, ref_id: int | None, texts: list[str]
    ) -> None:
        track = self._track(app, field)
        if track is not None:
            track.use(fitted, ref_id, texts)

    def has_reference(self, app: str, field: str) -> bool:
        track = self._tracks.get((app, field))
        return track is not None and track.fitted is not None

    def fit_abandoned(self, app: str, field: str) -> None:
        """The fit of a track's first texts failed or lost to an activated reference: a
        track without a reference collects fresh texts rather than retry the same ones."""
        track = self._tracks.get((app, field))
        if track is not None:
            track.fitting = False

    def process(self, batch: list[QueuedText], embeddings: F32) -> BatchOutcome:
        groups: dict[tuple[str, str], list[int]] = {}
        for i, item in enumerate(batch):
            groups.setdefault((item.app, item.field), []).append(i)
        scored: list[ScoredText] = []
        samples: list[DriftSample] = []
        for (app, field), rows in groups.items():
            now = batch[rows[-1]].at
            track = self._track(app, field, now)
            if track is None:
                continue
            track.last_seen = now
            x = embeddings[rows]
            items = [batch[i] for i in rows]
            if track.fitted is None:
                # Texts arriving while it fits are not needed; in a cluster only the node
                # holding the REFERENCES role collects them.
                if not track.fitting and self.fits_references:
                    self._collect(track, x, [i.text[:KEEP_TEXT_CHARS] for i in items])
                continue
            out = self._score(track, x, items)
            scored.extend(out)
            if self.shares_as is not None and track.ref_id is not None:
                flagged = sum(s.flagged for s in out)
                share = x.astype(np.float16)
                samples.append(
                    DriftSample(self.shares_as, app, field, track.ref_id, now, flagged, share)
                )
        fits, self._fit_requests = self._fit_requests, []
        return BatchOutcome(scored, fits, samples)

    def _score(self, track: Track, x: F32, items: list[QueuedText]) -> list[ScoredText]:
        assert track.fitted is not None and track.window is not None
        if not self.scores_drift:  # OOD only: another node slides the cluster's drift window
            ood = track.fitted.ood.score(x)
            track.count_ood(items[-1].at, len(items), int(ood.flagged.sum()))
            return _scored(items, ood)
        scores = score_batch(track.fitted, track.window, track.last, x)
        return self._apply(track, scores, items)

    def _collect(self, track: Track, x: F32, texts: list[str]) -> None:
        """Gather the first texts of an app as its reference; ask for a fit once there are
        enough."""
        track.pending.append(x)
        track.pending_texts.extend(texts)
        if len(track.pending_texts) < self.reference_size:
            return
        reference = np.concatenate(track.pending)[: self.reference_size]
        ref_texts = track.pending_texts[: self.reference_size]
        track.pending, track.pending_texts, track.fitting = [], [], True
        self._fit_requests.append(FitRequest(track.app, track.field, reference, ref_texts))

    def _apply(
        self, track: Track, scores: BatchScores, items: list[QueuedText]
    ) -> list[ScoredText]:
        before = track.last
        track.count_ood(items[-1].at, len(items), int(scores.ood.flagged.sum()))
        track.changed = True
        track.window, track.last = scores.window, scores.drift
        track.recent_texts.extend(i.text[:KEEP_TEXT_CHARS] for i in items)
        _report(track, before, scores.explanation)
        return _scored(items, scores.ood)

    # -- a cluster's drift (shared_drift.py) ---------------------------------------------------

    def add_peers(self, samples: list[DriftSample]) -> int:
        """Other nodes' embeddings into the drift windows and OOD counts, as if embedded here;
        the texts of those scored against another reference than the track's are dropped
        (returned: how many)."""
        dropped = 0
        touched: dict[tuple[str, str], tuple[Track, DriftResult | None]] = {}
        for s in samples:
            track = self._tracks.get((s.app, s.field))
            if track is None or track.window is None or track.ref_id != s.ref_id:
                dropped += s.n
                continue
            touched.setdefault((s.app, s.field), (track, track.last))
            track.window.add(s.embeddings.astype(np.float32))
            track.count_ood(s.at, s.n, s.flagged)
            track.recent_texts.extend([PEER_TEXT.format(node=s.node)] * s.n)
            track.changed = True
        for track, before in touched.values():
            assert track.fitted is not None and track.window is not None
            track.last = track.fitted.drift.score(track.window)
            newly = track.last.drifted and not (before is not None and before.drifted)
            _report(track, before, track.fitted.drift.explain(track.window) if newly else None)
        return dropped

    def rebuild_window(self, app: str, field: str, ref_id: int, x: F32, nodes: list[str]) -> None:
        """A drift window made anew from the cluster's latest embeddings (`nodes`: whose each
        row is), when this node takes the drift over."""
        track = self._tracks.get((app, field))
        if track is None or track.fitted is None or track.ref_id != ref_id or not len(x):
            return
        track.window = track.fitted.drift.new_window()
        track.window.add(x)
        track.recent_texts.clear()
        track.recent_texts.extend(PEER_TEXT.format(node=n) for n in nodes)
        track.last = track.fitted.drift.score(track.window)
        track.changed = True

    def snapshot_windows(self, only_changed: bool) -> list[WindowSnapshot]:
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

    def restore_window(self, snapshot: WindowSnapshot) -> None:
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


def _report(track: Track, before: DriftResult | None, why: DriftExplanation | None) -> None:
    """What changed, once drift is detected (`why`), and the log lines of drift starting and
    ending."""
    drift = track.last
    assert drift is not None
    if why is not None:
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
            drift_score=round(drift.drift_score or 0.0, 3),
        )
    elif before is not None and before.drifted and not drift.drifted:
        log.info("drift_ended", app=track.app, field=track.field)


def _scored(items: list[QueuedText], ood: OodResult) -> list[ScoredText]:
    flags = zip(items, ood.scores, ood.flagged, strict=True)
    threshold = float(ood.threshold)
    return [ScoredText(item, float(score), bool(flag), threshold) for item, score, flag in flags]
