"""Drift and OOD in the running daemon: real records in, a reference built from the first of
them, a topic change detected, scores in /api/v1/status and /metrics, a drift rule firing."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray
from prometheus_client import CollectorRegistry

from lookout.clock import SystemClock
from lookout.monitor.builders import merged_series
from lookout.monitor.config import DetectorsConfig, Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.detection.service import DetectionService
from lookout.monitor.ingest.records import Record
from tests.alerts.test_engine import post
from tests.conftest import CLINC150, Receiver, eventually, running, sample_value, status_of

DETECTORS = {
    # These tests are about the detectors, not the CPU budget (tests/monitor/test_sampler.py):
    # every text offered fits.
    "max_cpu_share": 64,
    "fields": ["prompt"],
    "reference": {"auto_size": 200},
    "drift": {"window": 40, "ert": 200},
    "ood": {"fpr": 0.02},
}


def prompts(domains: set[str], n: int, seed: int = 0) -> list[str]:
    rows = [json.loads(line) for line in CLINC150.open(encoding="utf-8")]
    texts = [r["text"] for r in rows if r["domain"] in domains and not r["is_oos"]]
    rng = np.random.default_rng(seed)
    return [texts[i] for i in rng.permutation(len(texts))[:n]]


def detecting(settings_for: Callable[..., Settings], **extra: object) -> Settings:
    base = settings_for()
    return Settings.model_validate(
        {
            **base.model_dump(mode="python", by_alias=True, exclude={"detectors"}),
            "bus": {**base.bus.model_dump(), "password": None},
            "eval_interval": 0.05,
            "detectors": DETECTORS,
            **extra,
        }
    )


async def send(d: Daemon, texts: list[str]) -> None:
    for start in range(0, len(texts), 50):
        await post(d, [{"app": "bot", "prompt": t} for t in texts[start : start + 50]])
    assert d.detection is not None
    await asyncio.wait_for(d.detection.wait_idle(), 60)


async def test_a_topic_change_is_drift_and_out_of_scope(
    settings_for: Callable[..., Settings], receiver: Receiver
) -> None:
    settings = detecting(
        settings_for,
        channels={"hook": {"kind": "webhook", "url": receiver.url}},
        rules=[
            {
                "name": "topic-drift",
                "metric": "drift_score",
                "where": {"app": "bot"},
                "threshold": 1.0,
                "channels": ["hook"],
            }
        ],
    )
    banking = prompts({"banking", "credit_cards"}, 320)
    travel = prompts({"travel", "auto_and_commute"}, 60)
    async with running(Daemon(settings)) as d:
        await send(d, banking[:200])  # the reference
        await send(d, banking[200:320])  # more of the same: no drift
        [status] = status_of(d)["detectors"]
        assert status["reference_id"] is not None and status["drifted"] is False
        quiet_ood = status["ood_rate"]
        await send(d, travel)
        [status] = status_of(d)["detectors"]
        assert status["drifted"] is True and status["drift_score"] > 1
        assert status["ood_rate"] > quiet_ood
        assert set(status["explanation"]["recent_farthest_from_reference"]) <= set(travel)
        labels = {"app": "bot", "field": "prompt"}
        score, statistic, threshold = (
            sample_value(d, f"lookout_drift_{name}", labels)
            for name in ("score", "statistic", "threshold")
        )
        assert score > 1 and statistic == pytest.approx(score * threshold)
        assert threshold == status["drift_threshold"]
        series = {p.metric: p.value for p in merged_series(d.detection, d.judge)(60, d.clock.now())}
        assert series["drift_statistic"] == pytest.approx(statistic)
        await asyncio.wait_for(receiver.received.wait(), 15)
    sent = json.loads(receiver.requests[0][1])
    assert (
        sent["alerts"][0]["labels"] | {"app": "bot", "field": "prompt"}
        == sent["alerts"][0]["labels"]
    )


async def test_a_restart_reloads_the_reference_without_recalibrating(
    settings_for: Callable[..., Settings],
) -> None:
    settings = detecting(settings_for)
    banking = prompts({"banking"}, 200)
    async with running(Daemon(settings)) as d:
        await send(d, banking)
        [before] = status_of(d)["detectors"]
    async with running(Daemon(settings)) as d2:
        [after] = status_of(d2)["detectors"]
    assert after["reference_id"] == before["reference_id"]
    assert after["drift_threshold"] == before["drift_threshold"]
    assert after["ood_threshold"] == before["ood_threshold"]


async def test_a_reference_from_another_embedder_is_refused_and_rebuilt(
    settings_for: Callable[..., Settings],
) -> None:
    banking = prompts({"banking"}, 200)
    async with running(Daemon(detecting(settings_for))) as d:
        await send(d, banking)  # a reference of the default (static, 256-d) embedder
        [before] = status_of(d)["detectors"]
    # Same dimension, another embedding function: its scores against that reference would be
    # noise, not a crash, so only the embedder's name can tell.
    hashing_256 = {**DETECTORS, "embedder": {"kind": "hashing", "dim": 256}}
    hashing = detecting(settings_for, detectors=hashing_256)
    async with running(Daemon(hashing)) as d2:
        assert sample_value(d2, "lookout_detector_errors_total", {"stage": "reference"}) == 1
        assert [s["reference_id"] for s in status_of(d2)["detectors"]] in ([], [None])
        await send(d2, banking)
        [after] = status_of(d2)["detectors"]
        assert after["reference_id"] == before["reference_id"] + 1
        await send(d2, banking[:50])  # records like the reference: not out of scope
        assert status_of(d2)["detectors"][0]["ood_rate"] < 0.2


async def test_a_restart_keeps_the_drift_window(settings_for: Callable[..., Settings]) -> None:
    settings = detecting(settings_for)
    banking, travel = prompts({"banking"}, 200), prompts({"travel"}, 60)
    async with running(Daemon(settings)) as d:
        await send(d, banking)
        await send(d, travel)  # drifted, and the window is full
        [before] = status_of(d)["detectors"]
    assert before["drifted"] is True
    async with running(Daemon(settings)) as d2:
        [after] = status_of(d2)["detectors"]  # no record since the restart
        points = merged_series(d2.detection, d2.judge)(60, d2.clock.now())
    assert after["drifted"] is True and after["window_count"] == before["window_count"]
    # The same window, its kernel sums added up in another order.
    assert after["drift_score"] == pytest.approx(before["drift_score"], rel=1e-6)
    [drift] = [p.value for p in points if p.metric == "drift_score"]
    assert drift == pytest.approx(before["drift_score"], rel=1e-6)


class SlowEmbedder:
    name, dim = "slow", 8

    def __init__(self) -> None:
        self.release = threading.Event()

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        self.release.wait(10)
        rows: NDArray[np.float32] = np.full((len(texts), self.dim), self.dim**-0.5, np.float32)
        return rows


async def test_a_slow_embedder_never_blocks_ingest() -> None:
    slow = SlowEmbedder()
    # No CPU budget here: this is about the queue and the load controller.
    cfg = DetectorsConfig.model_validate({**DETECTORS, "queue_size": 100, "max_texts_per_s": 1e9})
    registry = CollectorRegistry()
    service = DetectionService(
        cfg,
        embedder=slow,
        references=None,
        clock=SystemClock(),
        registry=registry,
        queue_size=100,
        adapt_interval_s=0.2,  # 5,000 texts fit the budget's first interval (64 cores / 2 ms)
    )

    def rate() -> float:
        return registry.get_sample_value("lookout_detector_sample_rate", {"app": "bot"}) or 0.0

    def offer(n: int) -> None:
        for i in range(n):
            record = Record(
                id=None,
                ts=0.0,
                app="bot",
                model="m",
                status="ok",
                received_at=0.0,
                prompt=f"prompt {i}",
            )
            service.offer(record, 0.0)

    async with service:
        started = time.process_time()
        offer(5000)
        offered_s = time.process_time() - started
        # The embedder is stuck: the sampler backs off on its own.
        await eventually(lambda: rate() < 0.1)
        dropped = registry.get_sample_value("lookout_detector_dropped_total") or 0.0
        slow.release.set()
        await asyncio.wait_for(service.wait_idle(), 30)
        await eventually(lambda: rate() == 1.0)  # and recovers once it keeps up
    assert offered_s < 1.0  # 5,000 offers while the embedder was stuck
    assert dropped > 4000  # bounded: what did not fit was dropped and counted
    assert service.processed <= 100 + 256


async def test_baseline_commands_and_a_running_daemon_follows_them(
    settings_for: Callable[..., Settings], tmp_path: Path
) -> None:
    import os
    import sys

    settings = detecting(settings_for)
    config = tmp_path / "cli.yaml"
    config.write_text(json.dumps({"store": {"url": settings.store.url}, "detectors": DETECTORS}))
    records = tmp_path / "records.jsonl"

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "lookout",
            "baseline",
            *args,
            "--config",
            str(config),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200"},
        )
        out, errors = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, errors.decode()
        return out.decode()

    lines = [json.dumps({"app": "bot", "prompt": t}) for t in prompts({"banking"}, 200)]
    records.write_text("\n".join([*lines, "not json"]) + "\n")
    assert "bot" in await cli("build", "--input", str(records), "--app", "bot")
    lines = [json.dumps({"app": "bot", "prompt": t}) for t in prompts({"travel"}, 200)]
    records.write_text("\n".join(lines) + "\n")
    await cli("build", "--input", str(records))
    listed = await cli("list")
    assert listed.count(" bot ") == 2 and "file:records.jsonl" in listed
    async with running(Daemon(settings)) as d:
        [status] = status_of(d)["detectors"]
        assert status["reference_id"] == 2  # the newest is active
        shown = await cli("show", "1", "--examples", "3")
        assert shown.count("\n  - ") == 3 and "file:records.jsonl" in shown
        assert "reference 1 (bot/prompt v1) is active" in await cli("activate", "1")

        async def follows() -> bool:
            return bool(status_of(d)["detectors"][0]["reference_id"] == 1)

        await eventually(follows)
        # Banking prompts fit the banking reference it now uses: no drift.
        await send(d, prompts({"banking"}, 60, seed=1))
        assert status_of(d)["detectors"][0]["drifted"] is False


async def test_ood_scores_are_kept_with_records_and_flagged_ones_always_kept(
    settings_for: Callable[..., Settings], topic_root: str
) -> None:
    import aiomqtt
    import httpx

    out_topic = f"lookout/ood/{topic_root}/{{app}}/{{field}}"
    detectors = {**DETECTORS, "ood": {"fpr": 0.02, "output_topic": out_topic}}
    settings = detecting(
        settings_for, store={"url": settings_for().store.url, "record_sample_rate": 0.0}
    )
    settings = settings.model_copy(update={"detectors": DetectorsConfig.model_validate(detectors)})
    travel = prompts({"travel"}, 40)
    banking = prompts({"banking"}, 240)
    announced: list[dict[str, object]] = []
    async with (
        aiomqtt.Client("127.0.0.1", 1883, identifier=f"sub-{topic_root}") as sub,
        running(Daemon(settings)) as d,
    ):
        await sub.subscribe(f"lookout/ood/{topic_root}/#", qos=1)
        await send(d, banking[:200])
        await post(d, [{"id": f"t{i}", "app": "bot", "prompt": t} for i, t in enumerate(travel)])
        await post(
            d, [{"id": f"b{i}", "app": "bot", "prompt": t} for i, t in enumerate(banking[200:])]
        )
        assert d.detection is not None
        await asyncio.wait_for(d.detection.wait_idle(), 60)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]

            async def found(prefix: str) -> list[dict[str, object]]:
                answers = [await http.get(f"/api/v1/records/{prefix}{i}") for i in range(40)]
                return [a.json() for a in answers if a.status_code == 200]

            async def stored() -> bool:
                return len(await found("t")) >= 30

            await eventually(stored)
            kept_travel, kept_banking = await found("t"), await found("b")

        async def collect() -> None:
            async for message in sub.messages:
                announced.append(json.loads(bytes(message.payload)))
                assert str(message.topic) == f"lookout/ood/{topic_root}/bot/prompt"
                if len(announced) >= len(kept_travel):
                    return

        await asyncio.wait_for(collect(), 15)
    # Out of scope: kept although the store's sample rate is 0, with score and flag.
    record = kept_travel[0]
    assert record["flags"]["ood"]["prompt"]["flagged"] is True  # type: ignore[index]
    assert record["ood_score"] == record["flags"]["ood"]["prompt"]["score"]  # type: ignore[index]
    assert len(kept_banking) <= 4  # in scope and unsampled: not kept (fpr 2%)
    # Announced on the output topic: ids and scores, never the text.
    assert {str(r["id"]) for r in kept_travel} <= {str(a["id"]) for a in announced}
    assert all(
        set(a) == {"id", "app", "model", "field", "ood_score", "flagged", "ts"} for a in announced
    )
    assert {str(a["id"]) for a in announced} <= {str(r["id"]) for r in kept_travel + kept_banking}


async def test_embedding_stays_within_its_cpu_budget_whatever_the_traffic() -> None:
    cfg = DetectorsConfig.model_validate({**DETECTORS, "max_texts_per_s": 100})
    registry = CollectorRegistry()
    service = DetectionService(
        cfg,
        embedder=SlowEmbedder(),
        references=None,
        clock=SystemClock(),
        registry=registry,
        adapt_interval_s=1.0,
    )
    for i in range(1000):
        service.offer(
            Record(
                id=None,
                ts=0.0,
                app="bot",
                model="m",
                status="ok",
                received_at=0.0,
                prompt=f"prompt {i}",
            ),
            0.0,
        )
    service.offer(
        Record(
            id=None,
            ts=0.0,
            app="bot",
            model="m",
            status="error",
            received_at=0.0,
            prompt="an error is always looked at",
        ),
        0.0,
    )
    queued = [item.text for item in service._queue]
    assert len(queued) == 101 and queued[-1] == "an error is always looked at"
    assert (registry.get_sample_value("lookout_detector_dropped_total") or 0.0) == 0.0


async def test_a_loud_app_cannot_starve_a_quiet_one_of_the_cpu_budget() -> None:
    cfg = DetectorsConfig.model_validate(
        {**DETECTORS, "max_texts_per_s": 100, "sample_rates": {"batch-jobs": 0.0}}
    )
    registry = CollectorRegistry()
    service = DetectionService(
        cfg,
        embedder=SlowEmbedder(),
        references=None,
        clock=SystemClock(),
        registry=registry,
        adapt_interval_s=1.0,
    )

    def second(loud: int, quiet: int) -> dict[str, int]:
        """One interval: the loud app's records arrive first, then the quiet app's."""
        service._queue.clear()
        for app, n in (("loud", loud), ("quiet", quiet), ("batch-jobs", 50)):
            for i in range(n):
                service.offer(
                    Record(
                        id=None,
                        ts=0.0,
                        app=app,
                        model="m",
                        status="ok",
                        received_at=0.0,
                        prompt=f"{app} {i}",
                    ),
                    0.0,
                )
        queued = [item.app for item in service._queue]
        service.adapt()
        return {app: queued.count(app) for app in ("loud", "quiet", "batch-jobs")}

    # Before any demand is known, first come first served: the loud app takes it all.
    assert second(1000, 10) == {"loud": 100, "quiet": 0, "batch-jobs": 0}
    # Then the budget is shared by demand: the quiet app gets all it wants, the loud the rest.
    assert second(1000, 10) == {"loud": 90, "quiet": 10, "batch-jobs": 0}
    assert second(1000, 10) == {"loud": 90, "quiet": 10, "batch-jobs": 0}

    def rate(app: str) -> float:
        return registry.get_sample_value("lookout_detector_sample_rate", {"app": app}) or 0.0

    assert (rate("loud"), rate("quiet"), rate("batch-jobs")) == (0.09, 1.0, 0.0)


class CostlyEmbedder:
    """Spends `cost_s` of its thread's CPU on each text, as a large model would."""

    name, dim = "costly", 8

    def __init__(self, cost_s: float) -> None:
        self.cost_s = cost_s

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        until = time.thread_time() + self.cost_s * len(texts)
        while time.thread_time() < until:
            pass
        rows: NDArray[np.float32] = np.full((len(texts), self.dim), self.dim**-0.5, np.float32)
        return rows


async def test_a_costly_embedder_is_held_to_its_share_of_a_core() -> None:
    # A budget in texts would let a 4 ms embedder take 4 cores at 1,000 texts/s; the budget in
    # CPU holds it to its share whatever a text costs.
    cfg = DetectorsConfig.model_validate({**DETECTORS, "max_cpu_share": 0.1})
    registry = CollectorRegistry()
    service = DetectionService(
        cfg,
        embedder=CostlyEmbedder(0.004),
        references=None,
        clock=SystemClock(),
        registry=registry,
        adapt_interval_s=0.05,
    )

    def gauge(name: str) -> float:
        return registry.get_sample_value(name) or 0.0

    async with service:
        for i in range(2000):
            service.offer(Record(None, 0.0, "bot", "m", "ok", 0.0, prompt=f"p{i}"), 0.0)
        await eventually(lambda: gauge("lookout_detector_cpu_seconds_per_text") > 0.003)
        assert 0.003 < gauge("lookout_detector_cpu_seconds_per_text") < 0.006
        # 0.1 of a core at ~4 ms a text: ~25 texts a second, not the 1,000 of the cap.
        assert 15 < gauge("lookout_detector_budget_texts_per_second") < 35


async def test_a_local_embedder_is_timed_before_the_first_texts() -> None:
    # The budget starts from this embedder's own cost, not a guess: no burst at start.
    cfg = DetectorsConfig.model_validate({**DETECTORS, "max_cpu_share": 0.1})
    registry = CollectorRegistry()
    service = DetectionService(
        cfg,
        embedder=CostlyEmbedder(0.004),
        references=None,
        clock=SystemClock(),
        registry=registry,
        adapt_interval_s=0.05,
        warm_up=True,
    )

    def budget() -> float:
        return registry.get_sample_value("lookout_detector_budget_texts_per_second") or 0.0

    async with service:  # no record offered
        await eventually(lambda: 0 < budget() < 35)
        assert 15 < budget() < 35  # 0.1 of a core at ~4 ms a text
