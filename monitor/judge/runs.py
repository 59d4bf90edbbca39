"""One judge run: past the daily token cap, skipped with a logged reason and a metric;
otherwise sample up to `sample_size` stored records per app, grade them (bounded concurrency;
each call's tokens reserved against the cap before it is made), store verdicts and totals record
by record, re-judge the anchors, and feed the series rules read."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import structlog

from lookout.detectors.judge import Criterion, criteria_from
from lookout.errors import LookoutError
from lookout.monitor.judge.anchors import Anchor, agreement
from lookout.monitor.judge.budget import TokenBudget, estimate_tokens
from lookout.monitor.judge.eval_series import GradedPair
from lookout.monitor.judge.eval_store import PairCandidate, PairQuery
from lookout.monitor.judge.schedule import DAY_S
from lookout.monitor.judge.series import Agreement, JudgedRecord, JudgeLedger
from lookout.monitor.judge.store import (
    STORE_ERRORS,
    Candidate,
    RunTotals,
    SampleQuery,
    stored,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from lookout.clock import Clock
    from lookout.monitor.config import JudgeConfig
    from lookout.monitor.judge.client import GradeResult, JudgeClient
    from lookout.monitor.judge.evaluations import Evaluations
    from lookout.monitor.judge.metrics import JudgeMetrics
    from lookout.monitor.judge.store import JudgeStore
    from lookout.monitor.metrics.prices import PriceTable

log = structlog.get_logger(__name__)


class JudgeRunner:
    def __init__(
        self,
        cfg: JudgeConfig,
        *,
        store: JudgeStore,
        client: JudgeClient,
        clock: Clock,
        prices: PriceTable,
        metrics: JudgeMetrics,
        ledger: JudgeLedger,
        anchors: list[Anchor],
        retention_s: float,
        evaluations: Evaluations | None = None,
    ) -> None:
        self._cfg = cfg
        self._store = store
        self._client = client
        self._clock = clock
        self._prices = prices
        self._m = metrics
        self.ledger = ledger
        self._anchors = anchors
        self._retention_s = retention_s
        self._evals = evaluations
        self._criteria: list[Criterion] = criteria_from(cfg.criteria, cfg.custom_criteria)
        self.criteria = [c.name for c in self._criteria]
        self._model_name = (cfg.model or "").split(":", 1)[-1]
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self.started: Callable[[int], None] = lambda run_id: None  # told each run's id

    async def run(
        self, trigger: str, app: str | None, request_id: int | None, run_key: str | None = None
    ) -> int | None:
        """A run from start to end; its id. None when `run_key` was taken: another node of the
        cluster has started (or made) this run."""
        now = self._clock.now()
        used = await self._store.tokens_since(now - now % DAY_S)
        run_id = await self._store.start_run(now, trigger, app, run_key)
        if run_id is None:
            return None
        self.started(run_id)
        try:
            if request_id is not None:
                await self._store.link_request(request_id, run_id)
            await self._judge_run(run_id, now, used, trigger, app)
        except* STORE_ERRORS as errors:  # the records' tasks raise them in a group
            # Ended, not left `running` (a `run-now --wait` is waiting for its outcome).
            detail = f"store error: {errors.exceptions[0]}"
            with contextlib.suppress(*STORE_ERRORS):
                await self._store.finish_run(run_id, self._clock.now(), "failed", detail=detail)
            raise
        return run_id

    async def _judge_run(
        self, run_id: int, now: float, used: int, trigger: str, app: str | None
    ) -> None:
        await self._score_references(now, app)  # no model: before the cap, which it ignores
        if await self._skipped_over_cap(run_id, used):
            return
        await self._store.prune(now - self._retention_s)
        self.ledger.prune(now)
        candidates = await self._store.candidates(self._sample_query(now, app))
        pairs = await self._pair_candidates(now, app)
        budget = TokenBudget(self._cfg.max_tokens_per_day, used)
        run = _RunState(run_id)
        log.info(
            "judge_run_started",
            run_id=run_id,
            trigger=trigger,
            app=app,
            records=len(candidates),
            anchors=len(self._anchors),
            pairs=len(pairs),
        )
        async with asyncio.TaskGroup() as tg:
            for c in candidates:
                tg.create_task(self._judge_record(run, c, budget))
            for pair in pairs:
                tg.create_task(self._judge_pair(run, pair, budget))
            for i, anchor in enumerate(self._anchors):
                tg.create_task(self._judge_anchor(run, i, anchor, budget))
        await self._finish_run(run, budget)

    async def _skipped_over_cap(self, run_id: int, used: int) -> bool:
        cap = self._cfg.max_tokens_per_day
        if used < cap:
            return False
        detail = f"daily token cap reached: {used} of {cap} tokens used today (UTC)"
        self._m.runs_skipped.labels("token_cap").inc()
        log.warning("judge_run_skipped", reason="token_cap", used=used, cap=cap, run_id=run_id)
        await self._store.finish_run(run_id, self._clock.now(), "skipped", detail=detail)
        return True

    def _sample_query(self, now: float, app: str | None) -> SampleQuery:
        cfg = self._cfg
        return SampleQuery(
            since=now - cfg.lookback,
            per_app=cfg.sample_size,
            seed=cfg.seed,
            apps=[app] if app else cfg.apps,
            models=cfg.models,
            statuses=cfg.statuses,
            ood_first=cfg.ood_first,
            feedback_first=cfg.feedback_first,
        )

    async def _finish_run(self, run: _RunState, budget: TokenBudget) -> None:
        # The series move once per run, so a rule sees whole runs, never half of one.
        for judged in sorted(run.judged, key=lambda j: j.at):
            self.ledger.add(judged)
        if self._evals is not None:
            for pair in sorted(run.pairs, key=lambda p: p.at):
                self._evals.ledger.add_pair(pair)
        agreed, compared = sum(m[0] for m in run.matches), sum(m[1] for m in run.matches)
        share = agreed / compared if compared else None
        finished = self._clock.now()
        if share is not None:
            self.ledger.add_agreement(Agreement(finished, share, compared))
            self._m.agreement.set(share)
        t = run.totals
        outcome = "failed" if t.failed and not t.judged and not compared else "done"
        detail = f"{t.skipped} records skipped: daily token cap" if t.skipped else ""
        await self._store.finish_run(
            run.id, finished, outcome, detail=detail, agreement=share, anchors=compared
        )
        self._m.tokens_today.set(budget.used)
        log.info(
            "judge_run_finished",
            run_id=run.id,
            outcome=outcome,
            judged=t.judged,
            failed=t.failed,
            skipped=t.skipped,
            input_tokens=t.input_tokens,
            output_tokens=t.output_tokens,
            cost=round(t.cost, 6),
            agreement=share,
        )

    async def _grade(
        self,
        run: _RunState,
        label: str,
        texts: tuple[str | None, str | None, str | None],
        budget: TokenBudget,
    ) -> GradeResult | None:
        """One record graded within the cap; None when skipped or failed (counted, logged)."""
        estimate = estimate_tokens(
            list(texts), len(self._criteria), self._client.per_criterion_calls
        )
        async with self._slots:
            if not budget.reserve(estimate):
                run.add(skipped=1)
                self._m.records.labels("skipped").inc()
                return None
            try:
                graded = await self._client.grade(*texts[:2], self._criteria, texts[2])
            except Exception as exc:  # one record's failure never ends the run or the daemon
                budget.settle(estimate, 0)
                run.add(failed=1)
                self._m.records.labels("failed").inc()
                reason = str(exc) if isinstance(exc, LookoutError) else type(exc).__name__
                log.warning("judge_record_failed", run_id=run.id, record=label, error=reason)
                return None
            self._charge(run, budget, estimate, (graded.input_tokens, graded.output_tokens))
        run.add(judged=1)
        self._m.records.labels("judged").inc()
        self._m.redactions.inc(graded.redactions)
        return graded

    def _charge(
        self, run: _RunState, budget: TokenBudget, estimate: int, tokens: tuple[int, int]
    ) -> None:
        """A call's tokens and cost, on the run, the day's budget and the metrics."""
        tokens_in, tokens_out = tokens
        if tokens_in + tokens_out == 0:
            tokens_in = estimate  # a model that reports no usage is charged the estimate
        budget.settle(estimate, tokens_in + tokens_out)
        cost = self._prices.cost(self._model_name, tokens_in, tokens_out)
        run.add(input_tokens=tokens_in, output_tokens=tokens_out, cost=cost)
        self._m.tokens.labels("input").inc(tokens_in)
        self._m.tokens.labels("output").inc(tokens_out)
        self._m.cost.inc(cost)

    async def _judge_record(self, run: _RunState, c: Candidate, budget: TokenBudget) -> None:
        ref = (c.metadata or {}).get(self._cfg.reference_key)
        graded = await self._grade(
            run, c.id, (c.prompt, c.response, ref if isinstance(ref, str) else None), budget
        )
        at = self._clock.now()
        rows = []
        if graded is not None:
            rows = [stored(v, c, run.id, at, self._cfg.model or "") for v in graded.verdicts]
            for v in graded.verdicts:
                self._m.verdicts.labels(v.criterion, "pass" if v.passed else "fail").inc()
            run.judged.append(JudgedRecord.of(at, c.app, graded.verdicts, c.id))
        await self._store.record(run.id, rows, run.totals)

    async def _score_references(self, now: float, app: str | None) -> None:
        if self._evals is None:
            return
        scored = await self._evals.references.score(now, [app] if app else self._cfg.apps)
        for s in scored:
            self._evals.ledger.add_reference(s)
        self._m.reference_scores.inc(len(scored))

    async def _pair_candidates(self, now: float, app: str | None) -> list[PairCandidate]:
        """The run's shadow pairs (after pruning what is past retention)."""
        if self._evals is None:
            return []
        await self._evals.store.prune(now - self._retention_s)
        self._evals.ledger.prune(now)
        cfg = self._cfg
        if cfg.pairs_per_run == 0:
            return []
        query = PairQuery(
            since=now - cfg.lookback,
            shadow_key=cfg.shadow_key,
            reference_key=cfg.reference_key,
            per_app=cfg.pairs_per_run,
            apps=[app] if app else cfg.apps,
        )
        incomplete = await self._evals.store.unpaired_shadows(query)
        self._m.incomplete_pairs.set(incomplete)
        if incomplete:
            log.info("judge_pairs_incomplete", shadows=incomplete, apps=list(query.apps))
        return await self._evals.store.pair_candidates(query)

    async def _judge_pair(self, run: _RunState, pair: PairCandidate, budget: TokenBudget) -> None:
        """Both orders graded within the cap; the outcome stored with the run's totals."""
        assert self._evals is not None
        clean = self._evals.pairs.clean(pair)
        estimate = clean.estimate()
        async with self._slots:
            if not budget.reserve(estimate):
                self._m.pairs.labels("skipped").inc()
                return
            try:
                graded = await self._evals.pairs.grade(clean)
            except Exception as exc:  # one pair's failure never ends the run
                budget.settle(estimate, 0)
                self._m.pairs.labels("failed").inc()
                reason = str(exc) if isinstance(exc, LookoutError) else type(exc).__name__
                log.warning("judge_pair_failed", run_id=run.id, record=pair.shadow_id, error=reason)
                return
            self._charge(run, budget, estimate, (graded.input_tokens, graded.output_tokens))
        at = self._clock.now()
        self._m.pairs.labels(graded.outcome.value).inc()
        self._m.redactions.inc(clean.redactions)
        row = graded.stored(pair, run.id, at, self._cfg.model or "")
        run.pairs.append(GradedPair.of(row))
        await self._evals.store.put_pair(row)
        await self._store.record(run.id, [], run.totals)

    async def _judge_anchor(
        self,
        run: _RunState,
        index: int,
        anchor: Anchor,
        budget: TokenBudget,
    ) -> None:
        texts = (anchor.prompt, anchor.response, anchor.reference)
        graded = await self._grade(run, f"anchor:{index}", texts, budget)
        if graded is not None:
            run.matches.append(
                agreement(anchor.expected, {v.criterion: v.passed for v in graded.verdicts})
            )
        await self._store.record(run.id, [], run.totals)


class _RunState:
    def __init__(self, run_id: int) -> None:
        self.id = run_id
        self.totals = RunTotals()
        self.judged: list[JudgedRecord] = []
        self.matches: list[tuple[int, int]] = []  # anchors: (verdicts as expected, compared)
        self.pairs: list[GradedPair] = []

    def add(self, **deltas: Any) -> None:
        t = self.totals
        self.totals = replace(t, **{k: getattr(t, k) + v for k, v in deltas.items()})
