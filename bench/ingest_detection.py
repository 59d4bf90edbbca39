"""What the detectors did during one bench/ingest.py round, from the daemon's own metrics.

Read in the lookout subscriber's process from the daemon's registry (the figures /metrics
serves), restricted to the detection metrics so the window and detector collectors are not
run on the hot path: the effective sample rate gauge (`lookout_detector_sample_rate`, the share
of an app's records the sampler really took in the last interval), sampled about twice a second
through the round; and, as differences from the round's start to its end, texts embedded,
texts served from the embedding cache, seconds spent embedding and texts dropped because the
detection queue was full; and, from /proc, the CPU time of the detection thread and of the
event loop's thread (ingest: decode, windows, store hand-off), so a round's CPU splits into the
detection thread's, the loop's and that of the other threads (the store's writer, the
tokenizers' own pool).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_COUNTERS = {
    "embedded": "lookout_embedded_texts_total",
    "cache_hits": "lookout_embed_cache_hits_total",
    "embed_s": "lookout_embed_seconds_total",
    "dropped": "lookout_detector_dropped_total",
}
_RATE = "lookout_detector_sample_rate"
_DEPTH = "lookout_detector_queue_depth"
_EVERY_S = 0.5


class DetectionWatch:
    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry.restricted_registry([*_COUNTERS.values(), _RATE, _DEPTH])
        self._start = self._counters()
        self._thread_cpu_s = detection_thread_cpu_s()
        self._loop_cpu_s = thread_cpu_s(threading.main_thread().native_id)
        self._rates: list[float] = []
        self._last_sample = 0.0

    def _samples(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = {}
        for metric in self._registry.collect():
            for sample in metric.samples:
                out.setdefault(sample.name, []).append(sample.value)
        return out

    def _counters(self) -> dict[str, float]:
        samples = self._samples()
        return {key: sum(samples.get(name, [0.0])) for key, name in _COUNTERS.items()}

    def sample(self) -> None:
        """The gauge now, at most every half second (call it as often as convenient)."""
        now = time.perf_counter()
        if now - self._last_sample < _EVERY_S:
            return
        self._last_sample = now
        rates = self._samples().get(_RATE)
        if rates:  # one app in this bench: the mean is its rate
            self._rates.append(sum(rates) / len(rates))

    def finish(self, elapsed_s: float) -> dict[str, Any]:
        self._last_sample = 0.0
        self.sample()
        end = self._counters()
        detection_cpu_s = detection_thread_cpu_s() - self._thread_cpu_s
        loop_cpu_s = thread_cpu_s(threading.main_thread().native_id) - self._loop_cpu_s
        delta = {key: end[key] - self._start[key] for key in _COUNTERS}
        looked_up = delta["embedded"] + delta["cache_hits"]
        return {
            "sample_rate_mean": sum(self._rates) / len(self._rates) if self._rates else None,
            "sample_rate_last": self._rates[-1] if self._rates else None,
            "embedded_per_s": delta["embedded"] / elapsed_s,
            "cache_hit_rate": delta["cache_hits"] / looked_up if looked_up else None,
            "embed_core_share": delta["embed_s"] / elapsed_s,
            "detection_cpu_s": detection_cpu_s,
            "loop_cpu_s": loop_cpu_s,
            "dropped": delta["dropped"],
            "queue_depth": sum(self._samples().get(_DEPTH, [0.0])),
        }


def thread_cpu_s(native_id: int | None) -> float:
    """User + system CPU of one of this process's threads so far."""
    if native_id is None:
        return 0.0
    fields = Path(f"/proc/self/task/{native_id}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def detection_thread_cpu_s() -> float:
    """CPU of the daemon's detection thread so far (0 before it starts)."""
    for thread in threading.enumerate():
        if thread.name.startswith("lookout-detect"):
            return thread_cpu_s(thread.native_id)
    return 0.0


def describe(label: str, result: dict[str, Any]) -> str:
    """One line for a lookout round (run_one's result): what the detectors achieved while
    lookout drained it, and where the CPU went."""
    figures = result["detection"]
    elapsed_s, cpu_s = result["elapsed_s"], result["cpu_s"]
    other_s = cpu_s - figures["detection_cpu_s"] - figures["loop_cpu_s"]
    per_record_us = result["cpu_us_per_record"] / cpu_s

    def share(x: float | None) -> str:
        return "-" if x is None else f"{x:.4f}"

    return (
        f"  detection, {label}: effective sample rate mean {share(figures['sample_rate_mean'])}"
        f" (last {share(figures['sample_rate_last'])}), "
        f"{figures['embedded_per_s']:,.0f} texts embedded/s, cache hit rate "
        f"{share(figures['cache_hit_rate'])}, embedder busy (wall) "
        f"{figures['embed_core_share']:.2f} of the round, {figures['dropped']:,.0f} texts "
        f"dropped, queue {figures['queue_depth']:,.0f}; CPU: detection thread "
        f"{figures['detection_cpu_s'] / elapsed_s:.2f} of a core, other threads "
        f"{other_s / elapsed_s:.2f}, event loop {figures['loop_cpu_s'] / elapsed_s:.2f} "
        f"({per_record_us * figures['loop_cpu_s']:.2f} us/record)"
    )
