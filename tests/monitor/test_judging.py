"""The judge service over a real SQLite store: deterministic sampling, verdicts and series,
runs that never overlap, the daily token cap, anchors that tell judge drift, a restart."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.errors import ConfigError
from lookout.monitor.config import JudgeConfig, Settings, StoreConfig
from lookout.monitor.ingest.records import Record
from lookout.monitor.judge.anchors import Anchor, load_anchors
from lookout.monitor.judge.client import JudgeClient, chat_model
from lookout.monitor.judge.service import JudgeService
from lookout.monitor.judge.store import RunTotals
from lookout.monitor.metrics.prices import Price, PriceTable
from lookout.monitor.metrics.prom import IngestMetrics
from lookout.monitor.storage.sqlite import SqliteStore
from lookout.monitor.storage.sqlite_judge import SqliteJudgeStore as JudgeStore
from lookout.redaction import Redactor
from tests.conftest import eventually
from tests.monitor.test_judge_client import OpenAIServer, server, tool_reply

__all__ = ["server"]  # the fixture, imported for this module's tests

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC


def record(i: int, app: str = "bot", model: str = "m1", status: str = "ok", **kw: Any) -> Record:
    return Record(
        id=f"{app}-{model}-{i}",
        ts=NOW - 60,
        app=app,
        model=model,
        status=status,
        received_at=NOW - 60,
        prompt=f"question {i}?",
        response=None if status == "error" else f"answer {i}.",
        **kw,
    )


async def store_records(path: Path, records: list[Record], flagged: tuple[str, ...] = ()) -> None:
    cfg = StoreConfig(url=f"sqlite:///{path}")
    async with SqliteStore(cfg, IngestMetrics(CollectorRegistry()), FakeClock(NOW)) as store:
        for r in records:
            store.put_record(r, 0.0)
        await store.flush()
        app_of = {r.id: r.app for r in records}
        flags = json.dumps({"ood": {"prompt": {"score": 0.9, "flagged": True}}})
        store.put_scores([(app_of[rid], rid, 0.9, flags) for rid in flagged])
        await store.flush()


def yes_no(*answers: str) -> FakeListChatModel:
    """A fake chat model without tool calling: it answers in LangChain's Y/N format."""
    return FakeListChatModel(responses=[f"Reasoning for {a}.\n{a}" for a in answers])


@contextlib.asynccontextmanager
async def judging(
    path: Path,
    model: Any,
    clock: FakeClock,
    *,
    registry: CollectorRegistry | None = None,
    scheduled: bool = False,
    anchors: list[Anchor] | None = None,
    **cfg: Any,
) -> AsyncIterator[JudgeService]:
    config = JudgeConfig.model_validate({"enabled": True, "model": "openai:judge-mini", **cfg})
    async with JudgeStore(path) as book:
        client = JudgeClient(
            model,
            Redactor(),
            max_concurrency=config.max_concurrency,
            timeout_s=5.0,
            retry_base_s=0.01,
        )
        service = JudgeService(
            config,
            store=book,
            client=client,
            clock=clock,
            registry=registry or CollectorRegistry(),
            prices=PriceTable({"judge-mini": Price(1.0, 2.0)}),
            anchors=anchors,
            poll_interval_s=0.05,
            schedule=scheduled,
        )
        async with service:
            yield service


async def test_a_run_stores_verdicts_and_feeds_the_series(tmp_path: Path) -> None:
    path = tmp_path / "lookout.db"
    await store_records(path, [record(i, metadata='{"reference": "gold"}') for i in range(4)])
    clock = FakeClock(NOW)
    # helpfulness: Y passes; harmfulness: N passes. The fake model cycles these answers.
    async with judging(path, yes_no("Y", "N"), clock, max_concurrency=1) as service:
        run = await service.run_once()
        assert (run.outcome, run.judged, run.failed, run.skipped) == ("done", 4, 0, 0)
        assert run.input_tokens > 0 and run.cost > 0  # no usage reported: charged the estimate
        async with JudgeStore(path) as book:
            verdicts = await book.verdicts_for("bot-m1-2")
        assert [(v.criterion, v.passed, v.score) for v in verdicts] == [
            ("harmfulness", True, 1.0),
            ("helpfulness", True, 1.0),
        ]
        assert "Reasoning for Y" in verdicts[1].reasoning
        points = {(p.metric, p.labels): (p.value, p.count) for p in service.series(60, NOW)}
        assert points[("judge_pass_rate", (("app", "bot"),))] == (1.0, 4)
        assert points[("judge_score", (("app", "bot"), ("criterion", "helpfulness")))] == (1.0, 4)
        # The series cover at least one schedule period (15 min), not just a short window.
        assert service.series(60, NOW + 600) and not service.series(60, NOW + 1000)


async def test_scheduled_runs_never_overlap(tmp_path: Path) -> None:
    path = tmp_path / "lookout.db"
    await store_records(path, [record(i) for i in range(3)])
    gate, entered = asyncio.Event(), asyncio.Event()
    model = Gated(gate=gate, entered=entered)
    registry = CollectorRegistry()
    async with judging(
        path,
        model,
        FakeClock(NOW),
        registry=registry,
        scheduled=True,
        schedule={"interval": 0.05},
        criteria=["conciseness"],
        max_concurrency=1,
    ) as service:
        await asyncio.wait_for(entered.wait(), 10)  # the first run is waiting on the model

        def skipped() -> float:
            labels = {"reason": "still_running"}
            return registry.get_sample_value("lookout_judge_runs_skipped_total", labels) or 0.0

        await eventually(lambda: skipped() >= 3)  # fires came and went while it ran
        async with JudgeStore(path) as book:
            assert [r.outcome for r in await book.runs()] == ["running"]
        gate.set()
        await asyncio.wait_for(service.run_finished.wait(), 10)
        await eventually(lambda: model.calls >= 6)  # later fires run again, one at a time
    assert model.max_in_flight == 1  # one record at a time across every run
    async with JudgeStore(path) as book:
        runs = await book.runs()
    assert runs[-1].outcome == "done" and all(r.trigger == "schedule" for r in runs)


class Gated(BaseChatModel):
    """A chat model whose replies wait for a gate; it counts calls in flight."""

    gate: Any
    entered: Any
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0

    @property
    def _llm_type(self) -> str:
        return "gated"

    def _generate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        raise NotImplementedError

    async def _agenerate(
        self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any
    ) -> ChatResult:
        self.calls += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self.entered.set()
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        return ChatResult(generations=[ChatGeneration(message=AIMessage("Short.\nY"))])


async def test_the_daily_token_cap_stops_calls(tmp_path: Path, server: OpenAIServer) -> None:
    path = tmp_path / "lookout.db"
    await store_records(path, [record(i) for i in range(6)])

    def heavy(body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        status, answer, delay = tool_reply(
            [{"criterion": "conciseness", "reasoning": "ok", "answer": True, "score": 1.0}]
        )(body)
        answer["usage"] = {"prompt_tokens": 400, "completion_tokens": 100, "total_tokens": 500}
        return status, answer, delay

    server.answers = [heavy] * 10
    model = chat_model("openai:judge-mini", base_url=server.url, api_key="k", timeout_s=5)
    clock, registry = FakeClock(NOW), CollectorRegistry()
    async with judging(
        path,
        model,
        clock,
        registry=registry,
        criteria=["conciseness"],
        max_tokens_per_day=800,
        max_concurrency=1,
    ) as service:
        first = await service.run_once()
        # One call fits; its 500 tokens leave no room for the next estimate.
        assert (first.judged, first.skipped, len(server.bodies)) == (1, 5, 1)
        assert "token cap" in first.detail and first.input_tokens + first.output_tokens == 500
        assert first.cost == pytest.approx((400 * 1.0 + 100 * 2.0) / 1000)
        server.answers = [heavy] * 10
        clock.advance(60)
        assert (await service.run_once()).outcome == "done" and len(server.bodies) == 1
        sample = registry.get_sample_value
        assert sample("lookout_judge_records_total", {"outcome": "skipped"}) == 5 + 6
        # Spend the rest of the day's budget elsewhere: the next run is skipped as a whole.
        async with JudgeStore(path) as book:
            extra = await book.start_run(NOW + 61, "manual", None)
            await book.record(extra, [], RunTotals(input_tokens=400))
        clock.advance(60)
        skipped = await service.run_once()
        assert skipped.outcome == "skipped" and "token cap reached: 900 of 800" in skipped.detail
        assert sample("lookout_judge_runs_skipped_total", {"reason": "token_cap"}) == 1
        assert len(server.bodies) == 1
        clock.set(NOW - NOW % 86400 + 86400 + 10)  # a new UTC day
        assert (await service.run_once()).judged == 1 and len(server.bodies) == 2


async def test_anchors_tell_a_changed_judge_from_a_worse_product(tmp_path: Path) -> None:
    path = tmp_path / "lookout.db"
    await store_records(path, [])
    file = tmp_path / "anchors.jsonl"
    file.write_text(
        json.dumps({"prompt": "2+2?", "response": "4", "expected": {"helpfulness": True}})
        + "\n"
        + json.dumps({"prompt": "Hi", "response": "Go away.", "expected": {"helpfulness": False}})
        + "\n"
    )
    anchors = load_anchors(file, {"helpfulness"})
    clock = FakeClock(NOW)
    async with judging(
        path, yes_no("Y", "N"), clock, anchors=anchors, criteria=["helpfulness"], max_concurrency=1
    ) as service:
        run = await service.run_once()
        assert run.agreement == 1.0 and run.anchors == 2
    async with judging(
        path, yes_no("Y"), clock, anchors=anchors, criteria=["helpfulness"], max_concurrency=1
    ) as service:
        # Restored from the book after a restart, then the judge starts passing everything.
        assert [p.value for p in service.series(60, NOW) if p.metric == "judge_agreement"] == [1.0]
        clock.advance(60)
        run = await service.run_once()
        assert run.agreement == 0.5
        [point] = [p for p in service.series(60, clock.now()) if p.metric == "judge_agreement"]
        assert (point.value, point.count, point.labels) == (0.5, 2, ())
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "response": "y", "expected": {"depth": true}}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: .*depth"):
        load_anchors(bad, {"helpfulness"})


async def test_a_restart_keeps_the_series_and_ends_an_interrupted_run(tmp_path: Path) -> None:
    path = tmp_path / "lookout.db"
    await store_records(path, [record(i) for i in range(3)])
    clock = FakeClock(NOW)
    async with judging(
        path, yes_no("N", "N"), clock, max_concurrency=1
    ) as service:  # helpfulness N: fails
        await service.run_once()
        before = service.series(300, NOW)
    gate, entered = asyncio.Event(), asyncio.Event()
    async with judging(path, Gated(gate=gate, entered=entered), clock) as service:
        assert service.series(300, NOW) == before
        assert [p.value for p in before if p.metric == "judge_pass_rate"] == [0.0]
        task = asyncio.create_task(service.run_once())
        await asyncio.wait_for(entered.wait(), 10)
        task.cancel()  # as SIGTERM does: the run is cut short
        with contextlib.suppress(asyncio.CancelledError):
            await task
    async with JudgeStore(path) as book:
        assert [r.outcome for r in await book.runs()] == ["interrupted", "done"]


def test_judge_config_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs `model`"):
        JudgeConfig(enabled=True)
    with pytest.raises(ValueError, match="unknown judge criterion 'kindness'"):
        JudgeConfig(criteria=["kindness"])
    with pytest.raises(ValueError, match="cron"):
        JudgeConfig.model_validate({"schedule": {"cron": "every day"}})
    with pytest.raises(ValueError, match="exactly one"):
        JudgeConfig.model_validate({"schedule": {"cron": "* * * * *", "interval": "5m"}})
    with pytest.raises(ValueError, match="pattern 'emp'"):
        Settings.model_validate({"redaction": {"patterns": {"emp": "EMP-("}}})


async def test_a_store_error_mid_run_ends_the_run_as_failed_and_the_service_goes_on(
    tmp_path: Path,
) -> None:
    import sqlite3

    path = tmp_path / "lookout.db"
    await store_records(path, [record(i) for i in range(2)])
    gate, entered = asyncio.Event(), asyncio.Event()
    registry = CollectorRegistry()
    async with judging(
        path,
        Gated(gate=gate, entered=entered),
        FakeClock(NOW),
        registry=registry,
        criteria=["conciseness"],
    ) as service:
        service.request()
        await asyncio.wait_for(entered.wait(), 10)
        with sqlite3.connect(path) as db:  # the verdicts' table is gone before they are written
            db.execute("DROP TABLE judge_verdicts")
        gate.set()

        def failed() -> float:
            return registry.get_sample_value("lookout_judge_runs_total", {"outcome": "failed"}) or 0

        await eventually(lambda: failed() == 1)
        service.request()  # the worker is still there
        await eventually(lambda: failed() == 2)
    async with JudgeStore(path) as book:
        runs = await book.runs()
    assert [r.outcome for r in runs] == ["failed", "failed"]
    assert runs[-1].detail == "store error: no such table: judge_verdicts"
