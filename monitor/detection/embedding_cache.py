"""Embeddings by text, each distinct text embedded once: an LRU cache in front of the
embedder, used on the detection thread only."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lookout.clock import Clock
    from lookout.detectors.arrays import F32
    from lookout.detectors.embedders import Embedder
    from lookout.monitor.detection.metrics import DetectionMetrics

DEFAULT_CACHE_ROWS = 4096  # ~4 MB of rows at 256-d


class EmbeddingCache:
    def __init__(
        self,
        embedder: Embedder,
        *,
        clock: Clock,
        metrics: DetectionMetrics,
        max_rows: int = DEFAULT_CACHE_ROWS,
    ) -> None:
        self._embedder = embedder
        self._clock = clock
        self._metrics = metrics
        self._max_rows = max_rows
        self._rows: OrderedDict[bytes, F32] = OrderedDict()

    @property
    def embedder_name(self) -> str:
        return self._embedder.name

    def embed(self, texts: list[str]) -> F32:
        """One row per text, in order; texts seen lately come from the cache."""
        keys = [hashlib.blake2b(t.encode(), digest_size=16).digest() for t in texts]
        rows: dict[bytes, F32] = {}
        todo: dict[bytes, str] = {}
        for key, text in zip(keys, texts, strict=True):
            cached = self._rows.get(key)
            if cached is not None:
                self._rows.move_to_end(key)
                rows[key] = cached
            else:
                todo.setdefault(key, text)
        if todo:
            rows.update(self._embed_new(todo))
        self._metrics.cache_hits.inc(len(texts) - len(todo))
        return np.stack([rows[k] for k in keys])

    def _embed_new(self, todo: dict[bytes, str]) -> dict[bytes, F32]:
        started = self._clock.monotonic()
        try:
            fresh = self._embedder.embed(list(todo.values()))
        except Exception:
            self._metrics.errors.labels("embed").inc()
            raise
        self._metrics.embed_seconds.inc(max(self._clock.monotonic() - started, 0.0))
        self._metrics.embedded_texts.inc(len(todo))
        rows: dict[bytes, F32] = {}
        for key, row in zip(todo, fresh, strict=True):
            rows[key] = self._rows[key] = row
            if len(self._rows) > self._max_rows:
                self._rows.popitem(last=False)
        return rows
