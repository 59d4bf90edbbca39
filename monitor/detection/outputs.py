"""Where scores go, on the event loop (the store's buffers are the loop's): OOD scores onto
stored records, records flagged out-of-distribution kept even when the store's sample skipped
them, and each flag announced on the OOD output topic."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lookout.monitor.detection.handoff import QueuedText, ScoredText
    from lookout.monitor.detection.metrics import DetectionMetrics
    from lookout.monitor.storage import Store


class ScoreOutputs:
    def __init__(
        self,
        *,
        store: Store | None,
        publish: Callable[[str, bytes], bool] | None,
        output_topic: str | None,
        metrics: DetectionMetrics,
    ) -> None:
        self._store = store
        self._publish = publish if output_topic else None
        self._output_topic = output_topic or ""
        self._metrics = metrics

    def keep(self, scored: list[ScoredText]) -> None:
        if not scored or self._store is None:
            return
        rows = []
        kept: dict[int, str | None] = {}
        for s in scored:
            record_id = s.item.stored_id
            if record_id is None:
                if not s.flagged:
                    continue
                key = id(s.item.record)  # both fields of one record: one row
                if key not in kept:
                    kept[key] = self._store.put_record(s.item.record, s.item.cost)
                record_id = kept[key]
                if record_id is None:
                    continue
            score = {"score": s.ood_score, "flagged": s.flagged, "threshold": s.threshold}
            flags = {"ood": {s.item.field: score}}
            rows.append((s.item.record.app, record_id, s.ood_score, json.dumps(flags)))
            if s.flagged and self._publish is not None:
                self._announce(s.item, record_id, s.ood_score)
        self._store.put_scores(rows)

    def _announce(self, item: QueuedText, record_id: str, score: float) -> None:
        assert self._publish is not None
        topic = self._output_topic.replace("{app}", item.app).replace("{field}", item.field)
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
            self._metrics.ood_output_dropped.inc()
