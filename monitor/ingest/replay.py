"""`lookout replay FILE.jsonl`: the ingest pipeline over a file, windows on record time."""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.monitor.builders import build_pipeline, build_windows
from lookout.monitor.config import Settings
from lookout.monitor.ingest.pipeline import Pipeline
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.metrics.windows import WindowStats
from lookout.monitor.storage import Store, open_store

# Replay windows are long and coarse so the summary covers a whole file.
REPLAY_BUCKET_S = 60.0
REPLAY_MAX_WINDOW_S = 31 * 86400.0


@dataclass
class ReplayReport:
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    first_ts: float | None = None
    last_ts: float | None = None
    elapsed_s: float = 0.0
    series: list[WindowStats] = field(default_factory=list)

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(bytes read so far, line) for each non-blank line."""
    done = 0
    with path.open("rb") as f:
        for line in f:
            done += len(line)
            stripped = line.strip()
            if stripped:
                yield done, stripped


async def replay_file(
    path: Path,
    pipeline: Pipeline,
    store: Store,
    *,
    topic: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    report = ReplayReport()
    windows = pipeline.windows
    started = time.perf_counter()
    for done, line in iter_lines(path):
        report.lines += 1
        # Record ts drives the windows; lines without ts are stamped now.
        result = pipeline.process_payload(line, topic, "replay", time.time(), event_time=True)
        report.accepted += result.accepted
        report.duplicates += result.duplicates
        for reason, _detail in result.rejected:
            report.rejected[reason] += 1
        if result.first_ts is not None and result.last_ts is not None:
            report.first_ts = min(result.first_ts, report.first_ts or result.first_ts)
            report.last_ts = max(result.last_ts, report.last_ts or result.last_ts)
        if report.lines % 1000 == 0:
            if progress is not None:
                progress(done)
            await store.flush()
    await store.flush()
    report.elapsed_s = time.perf_counter() - started
    if report.first_ts is not None and report.last_ts is not None:
        # Rates over the records' own time span, not the coarse buckets'.
        windows.started_at = report.first_ts
        end = report.last_ts + REPLAY_BUCKET_S
        report.series = windows.range(report.first_ts - REPLAY_BUCKET_S, end, report.last_ts)
    return report


async def run_replay(
    settings: Settings,
    path: Path,
    *,
    topic: str | None = None,
    keep: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ReplayReport:
    """Replay into a throw-away store, or into the configured one with `keep`."""
    prom = IngestMetrics(CollectorRegistry())
    windows = build_windows(
        settings, 0.0, bucket_s=REPLAY_BUCKET_S, max_window_s=REPLAY_MAX_WINDOW_S
    )
    with tempfile.TemporaryDirectory(prefix="lookout-replay-") as tmp:
        store_cfg = settings.store
        if not keep:
            store_cfg = store_cfg.model_copy(update={"url": f"sqlite:///{tmp}/replay.db"})
        store = open_store(store_cfg, prom, SystemClock())
        pipeline = build_pipeline(
            settings.model_copy(update={"store": store_cfg}), windows, prom, store
        )
        async with store:
            return await replay_file(path, pipeline, store, topic=topic, progress=progress)
