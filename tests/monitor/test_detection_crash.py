"""kill -9 with a drifted window: the restart resumes it (and the OOD counts) from the last
checkpoint, so the drift score neither goes blank nor lets a drift alert resolve."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import httpx

from lookout.monitor.storage.references import ReferenceStore
from tests.alerts.test_crash import ready, start, write_config
from tests.conftest import eventually, free_port
from tests.monitor.test_detection import DETECTORS, prompts


async def status(api: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient() as http:
        detectors: list[dict[str, Any]] = (await http.get(f"{api}/api/v1/status")).json()[
            "detectors"
        ]
    return detectors


async def send(api: str, texts: list[str]) -> None:
    async with httpx.AsyncClient() as http:
        for begin in range(0, len(texts), 50):
            body = [{"app": "bot", "prompt": t} for t in texts[begin : begin + 50]]
            response = await http.post(f"{api}/api/v1/records", json=body)
            assert response.status_code == 200


async def test_kill_9_keeps_the_drift_window_and_ood_counts_of_the_last_checkpoint(
    tmp_path: Path, topic_root: str
) -> None:
    api_port = free_port()
    api = f"http://127.0.0.1:{api_port}"
    db = tmp_path / "lookout.db"
    config = write_config(
        tmp_path,
        topic_root,
        api_port,
        detectors={**DETECTORS, "checkpoint_interval": "200ms"},
    )
    first = await start(config)
    try:
        await eventually(lambda: ready(api), timeout_s=30)
        await send(api, prompts({"banking"}, 200))

        async def reference_built() -> bool:
            return any(s.get("reference_id") for s in await status(api))

        await eventually(reference_built, timeout_s=60)
        await send(api, prompts({"travel"}, 60))

        async def drifted() -> bool:
            return any(s.get("drifted") and s["window_count"] == 40 for s in await status(api))

        await eventually(drifted, timeout_s=30)
        [before] = await status(api)

        async def checkpointed() -> bool:
            """The last checkpoint holds the full window and every OOD count seen."""
            async with ReferenceStore(db) as book:
                saved = await book.load_windows(0.0)
            return any(
                len(w.embeddings) == 40 and int(w.ood[:, 1].sum()) == before["ood_scored"]
                for w in saved
            )

        await eventually(checkpointed, timeout_s=30)
    finally:
        first.send_signal(signal.SIGKILL)
        await first.wait()
    assert first.returncode == -9

    second = await start(config)
    try:
        await eventually(lambda: ready(api), timeout_s=30)
        [after] = await status(api)  # no record since the restart
    finally:
        second.send_signal(signal.SIGTERM)
        await second.wait()
    assert after["reference_id"] == before["reference_id"]
    assert after["drifted"] is True and after["window_count"] == 40
    assert after["ood_scored"] == before["ood_scored"] and after["ood_rate"] == before["ood_rate"]
