"""The detection thread never waits on the event loop: while saving one app's new reference
is held up (a slow or locked disk), every other app's texts go on being scored."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.detectors.embedders import HashingEmbedder
from lookout.monitor.config import DetectorsConfig
from lookout.monitor.detection.service import DetectionService
from lookout.monitor.ingest.records import Record
from lookout.monitor.storage.references import ReferenceInfo, ReferenceStore
from tests.conftest import eventually
from tests.monitor.test_detection import DETECTORS, prompts


class HeldReferenceStore(ReferenceStore):
    """The real store, whose saves wait for `release` once `hold()` was called."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.release = asyncio.Event()
        self.release.set()
        self.saving = asyncio.Event()  # a save has begun since `hold()`

    def hold(self) -> None:
        self.release.clear()
        self.saving.clear()

    async def save(self, **kwargs: Any) -> ReferenceInfo:
        self.saving.set()
        await self.release.wait()
        return await super().save(**kwargs)


async def test_scoring_goes_on_while_a_reference_save_is_held(tmp_path: Path) -> None:
    clock = SystemClock()
    cfg = DetectorsConfig.model_validate({**DETECTORS, "max_texts_per_s": 1e9})
    async with HeldReferenceStore(tmp_path / "references.db") as references:
        service = DetectionService(
            cfg,
            embedder=HashingEmbedder(256),
            references=references,
            clock=clock,
            registry=CollectorRegistry(),
        )

        def send(app: str, texts: list[str]) -> None:
            for text in texts:
                record = Record(
                    id=None, ts=0.0, app=app, model="m", status="ok", received_at=0.0, prompt=text
                )
                service.offer(record, clock.now())

        def scored(app: str) -> int:
            status = {s["app"]: s for s in service.status(3600, clock.now())}
            return int(status.get(app, {}).get("ood_scored") or 0)

        async with service:
            send("a", prompts({"banking"}, 200))  # a's reference, saved at once
            await asyncio.wait_for(service.wait_idle(), 60)
            references.hold()
            send("b", prompts({"travel"}, 200))  # b's reference: its save is held
            await asyncio.wait_for(references.saving.wait(), 60)
            send("a", prompts({"banking"}, 50, seed=1))
            # Scored while b's save waits (a thread waiting on the loop would stop them all).
            await eventually(lambda: scored("a") == 50)
            assert not references.release.is_set()
            references.release.set()
            await asyncio.wait_for(service.wait_idle(), 60)
            ids = {s["app"]: s["reference_id"] for s in service.status(3600, clock.now())}
        assert ids == {"a": 1, "b": 2}
        assert [(i.app, i.active) for i in await references.list()] == [("a", True), ("b", True)]
