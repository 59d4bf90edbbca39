"""Shadow pairs and reference scores in judge runs, over a real SQLite store and a real local
OpenAI-compatible server as the judge: both orders asked, the position swap cancelling a
judge that always prefers the first answer, the daily cap, redaction, the series and their
restore at start."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from lookout.clock import FakeClock
from lookout.detectors.embedders import StaticEmbedder
from lookout.detectors.similarity import embedding_similarity
from lookout.monitor.config import JudgeConfig
from lookout.monitor.ingest.records import Record
from lookout.monitor.judge.client import JudgeClient, chat_model
from lookout.monitor.judge.service import JudgeService
from lookout.monitor.metrics.prices import Price, PriceTable
from lookout.monitor.storage.sqlite_evals import SqliteEvalStore as EvalStore
from lookout.monitor.storage.sqlite_judge import SqliteJudgeStore as JudgeStore
from lookout.redaction import Redactor
from tests.monitor.test_judge_client import Answer, OpenAIServer, completion, server, tool_reply
from tests.monitor.test_judging import NOW, store_records

__all__ = ["server"]

PROMPT = "I'm jane@example.com, card 4111 1111 1111 1111: how do I reset my password?"
PREFERENCE = (("app", "bot"), ("model", "m-old"), ("shadow_model", "m-new"))
_ANSWER = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End", re.S)


def answers_shown(body: dict[str, Any]) -> dict[str, str]:
    """{"A": first answer, "B": second answer} from a pairwise request."""
    return dict(_ANSWER.findall(body["messages"][-1]["content"]))


def pairwise_bodies(server: OpenAIServer) -> list[dict[str, Any]]:
    return [b for b in server.bodies if "tools" not in b]


def judge(pairwise: Callable[[dict[str, str]], str]) -> Answer:
    """A judge model: criteria requests (with tools) pass; pairwise ones get the verdict
    `pairwise` picks from the answers as shown."""

    def answer(body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        if "tools" in body:
            grade = {"criterion": "helpfulness", "reasoning": "ok", "answer": True, "score": 1.0}
            return tool_reply([grade])(body)
        best = pairwise(answers_shown(body))
        return 200, completion({"content": f"Assistant {best} explains it.\n[[{best}]]"}), 0.0

    return answer


def prefers(word: str) -> Answer:
    """A judge that picks the answer containing `word`, wherever it is shown."""
    return judge(lambda shown: "A" if word in shown["A"] else "B" if word in shown["B"] else "C")


def always(letter: str) -> Answer:
    return judge(lambda shown: letter)


def rec(rid: str, model: str, response: str, app: str = "bot", **meta: str) -> Record:
    return Record(
        id=rid,
        ts=NOW - 60,
        app=app,
        model=model,
        status="ok",
        received_at=NOW - 60,
        prompt=PROMPT,
        response=response,
        metadata=json.dumps(meta) if meta else None,
    )


def pairs(n: int = 3, app: str = "bot") -> list[Record]:
    """n production records (m-old, unhelpful) and their shadows (m-new, helpful)."""
    out = []
    for i in range(n):
        out.append(rec(f"{app}-p-{i}", "m-old", "No idea, sorry.", app))
        out.append(
            rec(
                f"{app}-s-{i}",
                "m-new",
                "Open Settings > Reset password.",
                app,
                shadow_of=f"{app}-p-{i}",
            )
        )
    return out


@contextlib.asynccontextmanager
async def judging(
    path: Path,
    server: OpenAIServer,
    clock: FakeClock,
    *,
    registry: CollectorRegistry | None = None,
    embedder: Any = None,
    **cfg: Any,
) -> AsyncIterator[JudgeService]:
    config = JudgeConfig.model_validate(
        {"enabled": True, "model": "openai:judge-mini", "criteria": ["helpfulness"], **cfg}
    )
    model = chat_model("openai:judge-mini", base_url=server.url, api_key="sk-t", timeout_s=5)
    async with JudgeStore(path) as book, EvalStore(path) as evals:
        service = JudgeService(
            config,
            store=book,
            client=JudgeClient(model, Redactor(), timeout_s=5.0, retry_base_s=0.01),
            clock=clock,
            registry=registry or CollectorRegistry(),
            prices=PriceTable({"judge-mini": Price(1.0, 2.0)}),
            schedule=False,
            eval_store=evals,
            embedder=embedder,
        )
        async with service:
            yield service


def points(service: JudgeService, metric: str) -> dict[Any, tuple[Any, int]]:
    return {p.labels: (p.value, p.count) for p in service.series(60, NOW) if p.metric == metric}


async def test_pairs_are_graded_in_both_orders_into_the_preference(
    tmp_path: Path, server: OpenAIServer
) -> None:
    path = tmp_path / "lookout.db"
    unpaired = [
        rec("lonely", "m-new", "Settings.", shadow_of="missing"),  # names no stored record
        rec("elsewhere", "m-new", "Settings.", app="help", shadow_of="bot-p-0"),  # other app
    ]
    await store_records(path, pairs(3) + unpaired)
    server.answers = [prefers("Settings")] * 40
    registry = CollectorRegistry()
    async with judging(path, server, FakeClock(NOW), registry=registry) as service:
        run = await service.run_once()
        assert points(service, "judge_preference") == {PREFERENCE: (1.0, 3)}
    asked = [answers_shown(b) for b in pairwise_bodies(server)]
    assert len(asked) == 6  # two calls per pair, none for the unpaired records
    helpful, unhelpful = "Open Settings > Reset password.", "No idea, sorry."
    shown = sorted((a["A"], a["B"]) for a in asked)
    assert shown == sorted([(helpful, unhelpful)] * 3 + [(unhelpful, helpful)] * 3)
    sent = json.dumps(server.bodies)
    assert "jane@example.com" not in sent and "4111" not in sent and "[EMAIL]" in sent
    # Both orders' tokens are on the run (8 records' criteria calls and 6 pairwise calls).
    assert (run.input_tokens, run.output_tokens) == (14 * 120, 14 * 30)
    async with EvalStore(path) as evals:
        stored = (await evals.evaluations_for("bot-s-1"))["pairs"]
    assert [(p.production_id, p.outcome, p.production_first, p.shadow_first) for p in stored] == [
        ("bot-p-1", "shadow", "B", "A")
    ]
    assert registry.get_sample_value("lookout_judge_pairs_total", {"outcome": "shadow"}) == 3
    # The two shadows whose production record is not stored were skipped, and counted.
    assert registry.get_sample_value("lookout_judge_incomplete_pairs") == 2
    # Graded pairs are not graded again; the series come back from the store at start.
    async with judging(path, server, FakeClock(NOW + 1)) as service:
        assert points(service, "judge_preference") == {PREFERENCE: (1.0, 3)}
        await service.run_once()
        assert len(pairwise_bodies(server)) == 6


@pytest.mark.parametrize(
    ("answer", "outcome", "value"),
    [
        (always("A"), "inconsistent", 0.0),  # prefers whatever is shown first: no preference
        (always("B"), "inconsistent", 0.0),
        (always("C"), "tie", 0.0),
        (prefers("idea"), "production", -1.0),
    ],
)
async def test_the_position_swap_cancels_order_bias(
    tmp_path: Path, server: OpenAIServer, answer: Answer, outcome: str, value: float
) -> None:
    path = tmp_path / "lookout.db"
    await store_records(path, pairs(2))
    server.answers = [answer] * 20
    registry = CollectorRegistry()
    async with judging(path, server, FakeClock(NOW), registry=registry) as service:
        await service.run_once()
        assert points(service, "judge_preference") == {PREFERENCE: (value, 2)}
    assert registry.get_sample_value("lookout_judge_pairs_total", {"outcome": outcome}) == 2


async def test_pairs_past_the_daily_cap_are_skipped_and_a_bad_reply_fails_one_pair(
    tmp_path: Path, server: OpenAIServer
) -> None:
    path = tmp_path / "lookout.db"
    await store_records(path, pairs(2))
    registry = CollectorRegistry()
    async with judging(
        path, server, FakeClock(NOW), registry=registry, max_tokens_per_day=1500, sample_size=1
    ) as service:
        server.answers = [prefers("Settings")] * 20
        await service.run_once()
    # One criteria call (~500 tokens reserved) fits; a pair reserves more than the rest.
    assert registry.get_sample_value("lookout_judge_pairs_total", {"outcome": "skipped"}) == 2
    assert pairwise_bodies(server) == []
    server.answers = [judge(lambda shown: "neither")] * 20
    async with judging(path, server, FakeClock(NOW), registry=CollectorRegistry()) as service:
        run = await service.run_once()
        assert points(service, "judge_preference") == {}
    assert run.outcome == "done" and len(pairwise_bodies(server)) == 2  # first order, per pair


async def test_records_with_a_reference_get_string_and_embedding_similarity(
    tmp_path: Path, server: OpenAIServer
) -> None:
    path = tmp_path / "lookout.db"
    gold = "Open Settings, then Reset password."
    await store_records(
        path,
        [
            rec("same", "m1", gold, reference=gold),
            rec("close", "m1", "MARTHA", reference="MARHTA"),
            rec("other-model", "m2", "abc", reference="xyz"),
            rec("no-reference", "m1", "Settings."),
        ],
    )
    server.answers = [prefers("Settings")] * 20
    embedder = StaticEmbedder(None)
    registry = CollectorRegistry()
    async with judging(
        path, server, FakeClock(NOW), registry=registry, embedder=embedder, max_tokens_per_day=0
    ) as service:
        run = await service.run_once()  # over the cap: no model call, but references scored
        assert run.outcome == "skipped" and server.bodies == []
        got = points(service, "judge_reference_similarity")
        rows = embedder.embed(["MARTHA", "MARHTA", "abc", "xyz"])
        close, far = embedding_similarity(rows[[0, 2]], rows[[1, 3]])
        m1 = (("app", "bot"), ("model", "m1"))
        m2 = (("app", "bot"), ("model", "m2"))
        assert got[(*m1, ("method", "string"))] == (pytest.approx((1 + 0.961111) / 2), 2)
        assert got[(*m1, ("method", "embedding"))] == (pytest.approx((1 + close) / 2, abs=1e-5), 2)
        assert got[(*m2, ("method", "string"))] == (0.0, 1)
        assert got[(*m2, ("method", "embedding"))] == (pytest.approx(far, abs=1e-5), 1)
        await service.run_once()  # scored once only
    assert registry.get_sample_value("lookout_judge_reference_scores_total") == 3
