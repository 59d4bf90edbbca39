"""Scheduled LLM-judge spot checks: the daemon's judge service.

APScheduler (3.x, AsyncIOScheduler) keeps the schedule (interval or cron, coalesced); its job
only marks a run due. One worker task owned here runs the runs one at a time, so a run never
overlaps another: a fire while one is due or running is counted and dropped. `lookout judge
run-now` writes a request in the judge book, taken within one poll interval.

A run: past the daily token cap, skipped with a logged reason and a metric; otherwise sample
up to `sample_size` stored records per app, grade them (bounded concurrency; each call's
tokens reserved against the cap before it is made), store verdicts and totals record by
record, re-judge the anchors, and feed the series rules read.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections import deque
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from lookout.detectors.judge import Criterion, criteria_from
from lookout.errors import LookoutError
from lookout.monitor.judge.anchors import Anchor, agreement
from lookout.monitor.judge.budget import TokenBudget, estimate_tokens
from lookout.monitor.judge.metrics import JudgeMetrics
from lookout.monitor.judge.series import Agreement, JudgedRecord, JudgeLedger
from lookout.monitor.judge.store import (
    Candidate,
    RunInfo,
    RunTotals,
    SampleQuery,
    StoredVerdict,
    stored,
)

if TYPE_CHECKING:
    from types import TracebackType

    from apscheduler.triggers.base import BaseTrigger
    from prometheus_client import CollectorRegistry

    from lookout.clock import Clock
    from lookout.monitor.config import JudgeConfig
    from lookout.monitor.judge.client import Graded, JudgeClient
    from lookout.monitor.judge.store import JudgeBook
    from lookout.monitor.metrics.prices import PriceTable
    from lookout.series import SeriesPoint

log = structlog.get_logger(__name__)
DAY_S = 86_400.0


def build_trigger(cfg: JudgeConfig) -> BaseTrigger:
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if cfg.schedule.cron is not None:
        return CronTrigger.from_crontab(cfg.schedule.cron)
    assert cfg.schedule.interval is not None
    return IntervalTrigger(seconds=cfg.schedule.interval)


def period_s(trigger: BaseTrigger, now: float) -> float:
    """The gap between the next two fires (a cron schedule's gaps may differ)."""
    start = datetime.fromtimestamp(now, UTC)
    first = trigger.get_next_fire_time(None, start)
    second = trigger.get_next_fire_time(first, first) if first is not None else None
    if first is None or second is None:
        return DAY_S
    return max(float((second - first).total_seconds()), 1.0)


@dataclass(frozen=True, slots=True)
class _Request:
    trigger: str
    app: str | None
    request_id: int | None


class JudgeService:
    def __init__(
        self,
        cfg: JudgeConfig,
        *,
        book: JudgeBook,
        client: JudgeClient,
        clock: Clock,
        registry: CollectorRegistry,
        prices: PriceTable,
        anchors: list[Anchor] | None = None,
        retention_s: float = 7 * DAY_S,
        poll_interval_s: float = 10.0,
        schedule: bool = True,
    ) -> None:
        self._cfg = cfg
        self._book = book
        self._client = client
        self._clock = clock
        self._prices = prices
        self._anchors = anchors or []
        self._retention_s = retention_s
        self._poll_interval_s = poll_interval_s
        self._schedule = schedule
        self._criteria: list[Criterion] = criteria_from(cfg.criteria, cfg.custom_criteria)
        self._model_name = (cfg.model or "").split(":", 1)[-1]
        self._m = JudgeMetrics(registry)
        self._trigger = build_trigger(cfg)
        self.ledger = JudgeLedger(
            max_age_s=retention_s, min_window_s=period_s(self._trigger, clock.now())
        )
        self._lock = asyncio.Lock()
        self._slots = asyncio.Semaphore(cfg.max_concurrency)
        self._requests: deque[_Request] = deque()
        self._due = False
        self._wake = asyncio.Event()
        self._scheduler: Any = None
        self._group: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.running: str | None = None  # the trigger of the run under way
        self.last_run: RunInfo | None = None
        self.run_finished = asyncio.Event()  # set after every run (tests and --wait)

    async def __aenter__(self) -> JudgeService:
        now = self._clock.now()
        interrupted = await self._book.interrupt_unfinished(now)
        if interrupted:
            log.warning("judge_runs_interrupted", runs=interrupted)
        for judged in _judged_records(await self._book.verdicts_since(now - self._retention_s)):
            self.ledger.add(judged)
        for at, value, count in await self._book.agreements_since(now - self._retention_s):
            self.ledger.add_agreement(Agreement(at, value, count))
        runs = await self._book.runs(limit=1)
        self.last_run = runs[0] if runs else None
        self._m.tokens_today.set(await self._book.tokens_since(now - now % DAY_S))
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        self._tasks = [
            self._group.create_task(self._work(), name="judge-worker"),
            self._group.create_task(self._poll_requests(), name="judge-requests"),
        ]
        if self._schedule:
            await self._start_scheduler(now)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        # A run under way is cut short: what it judged is stored record by record already.
        for task in self._tasks:
            task.cancel()
        if self._group is not None:
            await self._group.__aexit__(exc_type, exc, tb)
        await self._book.interrupt_unfinished(self._clock.now())

    async def _start_scheduler(self, now: float) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        self._scheduler.add_job(
            self._fire,
            self._trigger,
            id="judge",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        self._scheduler.start()
        # Fires missed while the daemon was down are coalesced into one run now.
        last = await self._book.runs(limit=1, trigger="schedule")
        if last:
            started = datetime.fromtimestamp(last[0].started_at, UTC)
            missed = self._trigger.get_next_fire_time(started, started)
            if missed is not None and missed.timestamp() < now:
                log.info("judge_missed_run", last_run_at=last[0].started_at)
                self._mark_due()

    async def _fire(self) -> None:
        """The scheduler's job: mark a run due; never a second one while one waits or runs."""
        self._mark_due()

    def _mark_due(self) -> None:
        if self._due or self.running == "schedule":
            self._m.runs_skipped.labels("still_running").inc()
            log.warning("judge_run_skipped", reason="still_running")
            return
        self._due = True
        self._wake.set()

    def request(self, app: str | None = None, request_id: int | None = None) -> None:
        """Queue a run outside the schedule (run-now)."""
        self._requests.append(_Request("run-now", app, request_id))
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._requests or self._due:
                if self._requests:
                    req = self._requests.popleft()
                else:
                    req, self._due = _Request("schedule", None, None), False
                try:
                    await self.run_once(req.trigger, app=req.app, request_id=req.request_id)
                except* (sqlite3.Error, OSError) as errors:  # the store, not the judge: next run
                    self._m.runs.labels("failed").inc()
                    log.error(
                        "judge_run_failed", trigger=req.trigger, error=str(errors.exceptions[0])
                    )

    async def _poll_requests(self) -> None:
        while True:
            try:
                taken = await self._book.take_requests(self._clock.now())
            except sqlite3.Error as exc:  # e.g. locked for longer than busy_timeout: next poll
                log.warning("judge_requests_unreadable", error=str(exc))
                taken = []
            for request_id, app in taken:
                log.info("judge_run_requested", app=app, request_id=request_id)
                self.request(app, request_id)
            await asyncio.sleep(self._poll_interval_s)

    async def run_once(
        self, trigger: str = "manual", *, app: str | None = None, request_id: int | None = None
    ) -> RunInfo:
        """One run, after any run under way; returns how it ended."""
        async with self._lock:
            self.running = trigger
            try:
                run_id = await self._run(trigger, app, request_id)
            finally:
                self.running = None
        info = await self._book.run(run_id)
        assert info is not None
        self.last_run = info
        self._m.runs.labels(info.outcome).inc()
        self.run_finished.set()
        self.run_finished = asyncio.Event()
        return info

    async def _run(self, trigger: str, app: str | None, request_id: int | None) -> int:
        now = self._clock.now()
        used = await self._book.tokens_since(now - now % DAY_S)
        run_id = await self._book.start_run(now, trigger, app)
        try:
            if request_id is not None:
                await self._book.link_request(request_id, run_id)
            await self._judge_run(run_id, now, used, trigger, app)
        except* (sqlite3.Error, OSError) as errors:  # the records' tasks raise them in a group
            # Ended, not left `running` (a `run-now --wait` is waiting for its outcome).
            detail = f"store error: {errors.exceptions[0]}"
            with contextlib.suppress(sqlite3.Error, OSError):
                await self._book.finish_run(run_id, self._clock.now(), "failed", detail=detail)
            raise
        return run_id

    async def _judge_run(
        self, run_id: int, now: float, used: int, trigger: str, app: str | None
    ) -> None:
        cfg = self._cfg
        if used >= cfg.max_tokens_per_day:
            detail = (
                f"daily token cap reached: {used} of {cfg.max_tokens_per_day} tokens "
                "used today (UTC)"
            )
            self._m.runs_skipped.labels("token_cap").inc()
            log.warning(
                "judge_run_skipped",
                reason="token_cap",
                used=used,
                cap=cfg.max_tokens_per_day,
                run_id=run_id,
            )
            await self._book.finish_run(run_id, self._clock.now(), "skipped", detail=detail)
            return
        await self._book.prune(now - self._retention_s)
        self.ledger.prune(now)
        candidates = await self._book.candidates(
            SampleQuery(
                since=now - cfg.lookback,
                per_app=cfg.sample_size,
                seed=cfg.seed,
                apps=[app] if app else cfg.apps,
                models=cfg.models,
                statuses=cfg.statuses,
                ood_first=cfg.ood_first,
            )
        )
        budget = TokenBudget(cfg.max_tokens_per_day, used)
        run = _RunState(run_id)
        matches: list[tuple[int, int]] = []
        log.info(
            "judge_run_started",
            run_id=run_id,
            trigger=trigger,
            app=app,
            records=len(candidates),
            anchors=len(self._anchors),
        )
        async with asyncio.TaskGroup() as tg:
            for c in candidates:
                tg.create_task(self._judge_record(run, c, budget))
            for i, anchor in enumerate(self._anchors):
                tg.create_task(self._judge_anchor(run, i, anchor, budget, matches))
        # The series move once per run, so a rule sees whole runs, never half of one.
        for judged in sorted(run.judged, key=lambda j: j.at):
            self.ledger.add(judged)
        agreed, compared = sum(m[0] for m in matches), sum(m[1] for m in matches)
        share = agreed / compared if compared else None
        finished = self._clock.now()
        if share is not None:
            self.ledger.add_agreement(Agreement(finished, share, compared))
            self._m.agreement.set(share)
        t = run.totals
        outcome = "failed" if t.failed and not t.judged and not compared else "done"
        detail = f"{t.skipped} records skipped: daily token cap" if t.skipped else ""
        await self._book.finish_run(
            run_id, finished, outcome, detail=detail, agreement=share, anchors=compared
        )
        self._m.tokens_today.set(budget.used)
        log.info(
            "judge_run_finished",
            run_id=run_id,
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
    ) -> Graded | None:
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
            tokens_in, tokens_out = graded.input_tokens, graded.output_tokens
            if tokens_in + tokens_out == 0:
                tokens_in = estimate  # a model that reports no usage is charged the estimate
            budget.settle(estimate, tokens_in + tokens_out)
        cost = self._prices.cost(self._model_name, tokens_in, tokens_out)
        run.add(judged=1, input_tokens=tokens_in, output_tokens=tokens_out, cost=cost)
        self._m.records.labels("judged").inc()
        self._m.tokens.labels("input").inc(tokens_in)
        self._m.tokens.labels("output").inc(tokens_out)
        self._m.cost.inc(cost)
        self._m.redactions.inc(graded.redactions)
        return graded

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
            run.judged.append(JudgedRecord.of(at, c.app, graded.verdicts))
        await self._book.record(run.id, rows, run.totals)

    async def _judge_anchor(
        self,
        run: _RunState,
        index: int,
        anchor: Anchor,
        budget: TokenBudget,
        matches: list[tuple[int, int]],
    ) -> None:
        texts = (anchor.prompt, anchor.response, anchor.reference)
        graded = await self._grade(run, f"anchor:{index}", texts, budget)
        if graded is not None:
            matches.append(
                agreement(anchor.expected, {v.criterion: v.passed for v in graded.verdicts})
            )
        await self._book.record(run.id, [], run.totals)

    def series(self, window_s: float, now: float) -> list[SeriesPoint]:
        return self.ledger.series(window_s, now)

    def status(self) -> dict[str, Any]:
        next_at = None
        if self._scheduler is not None:
            job = self._scheduler.get_job("judge")
            if job is not None and job.next_run_time is not None:
                next_at = job.next_run_time.timestamp()
        return {
            "model": self._cfg.model,
            "criteria": [c.name for c in self._criteria],
            "running": self.running,
            "next_run_at": next_at,
            "last_run": None if self.last_run is None else _run_json(self.last_run),
            "max_tokens_per_day": self._cfg.max_tokens_per_day,
        }


class _RunState:
    def __init__(self, run_id: int) -> None:
        self.id = run_id
        self.totals = RunTotals()
        self.judged: list[JudgedRecord] = []

    def add(self, **deltas: Any) -> None:
        t = self.totals
        self.totals = replace(t, **{k: getattr(t, k) + v for k, v in deltas.items()})


def _run_json(run: RunInfo) -> dict[str, Any]:
    return asdict(run)


def _judged_records(verdicts: list[StoredVerdict]) -> list[JudgedRecord]:
    """Stored verdicts (one per record and criterion) as judged records, oldest first."""
    grouped: dict[str, tuple[str, float, list[StoredVerdict]]] = {}
    for v in verdicts:
        grouped.setdefault(v.record_id, (v.app, v.judged_at, []))[2].append(v)
    oldest_first = sorted(grouped.values(), key=lambda g: g[1])
    return [JudgedRecord.of(at, app, vs) for app, at, vs in oldest_first]
