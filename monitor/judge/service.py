"""Scheduled LLM-judge spot checks: the daemon's judge service.

APScheduler (3.x, AsyncIOScheduler) keeps the schedule (interval or cron, coalesced); its job
only marks a run due. One worker task owned here runs the runs one at a time, so a run never
overlaps another: a fire while one is due or running is counted and dropped. `lookout judge
run-now` writes a request in the judge store, taken within one poll interval.

In a cluster (docs/scale-out.md) every node keeps the schedule, but only the holder of the
judge role (`gate`) acts on a fire or takes requests; a scheduled run is keyed by its tick (the
trigger's fire time, the same on every node), so two nodes that both believe they hold the role
still make one run per tick: the second finds the key taken and skips (counted,
`reason="tick_taken"`). The other nodes read the runs it finishes into their series
(judge/peers.py). A node alone holds the role for good.

A run itself is judge/runs.py's.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from lookout.monitor.judge.eval_series import EvalLedger
from lookout.monitor.judge.evaluations import Evaluations
from lookout.monitor.judge.metrics import JudgeMetrics
from lookout.monitor.judge.pairwise import PairJudge
from lookout.monitor.judge.peers import PeerRuns
from lookout.monitor.judge.reference_scores import ReferenceScorer
from lookout.monitor.judge.runs import JudgeRunner
from lookout.monitor.judge.schedule import DAY_S, build_trigger, period_s, tick_at
from lookout.monitor.judge.series import JudgeLedger
from lookout.monitor.judge.store import STORE_ERRORS, RunInfo

if TYPE_CHECKING:
    from types import TracebackType

    from prometheus_client import CollectorRegistry

    from lookout.clock import Clock
    from lookout.detectors.embedders import Embedder
    from lookout.monitor.cluster.leadership import RoleGate
    from lookout.monitor.config import JudgeConfig
    from lookout.monitor.judge.anchors import Anchor
    from lookout.monitor.judge.client import JudgeClient
    from lookout.monitor.judge.eval_store import EvalStore
    from lookout.monitor.judge.store import JudgeStore
    from lookout.monitor.metrics.prices import PriceTable
    from lookout.series import SeriesPoint

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class JudgeServiceStatus:
    model: str | None
    criteria: list[str]
    running: str | None  # the trigger of the run under way
    next_run_at: float | None
    last_run: RunInfo | None
    max_tokens_per_day: int


@dataclass(frozen=True, slots=True)
class _Request:
    trigger: str
    app: str | None
    request_id: int | None
    tick: float | None = None  # a scheduled run's fire time


class JudgeService:
    def __init__(
        self,
        cfg: JudgeConfig,
        *,
        store: JudgeStore,
        client: JudgeClient,
        clock: Clock,
        registry: CollectorRegistry,
        prices: PriceTable,
        anchors: list[Anchor] | None = None,
        retention_s: float = 7 * DAY_S,
        poll_interval_s: float = 10.0,
        schedule: bool = True,
        eval_store: EvalStore | None = None,
        embedder: Embedder | None = None,
        gate: RoleGate | None = None,
    ) -> None:
        """`gate`: the judge role in a cluster; None: this node holds it for good."""
        self._cfg = cfg
        self._gate = gate
        self._store = store
        self._clock = clock
        self._retention_s = retention_s
        self._poll_interval_s = poll_interval_s
        self._schedule = schedule
        self._m = JudgeMetrics(registry)
        self._trigger = build_trigger(cfg)
        min_window_s = period_s(self._trigger, clock.now())
        self.ledger = JudgeLedger(max_age_s=retention_s, min_window_s=min_window_s)
        self.evaluations = _evaluations(
            cfg, eval_store, embedder, client, (retention_s, min_window_s)
        )
        self._runner = JudgeRunner(
            cfg,
            store=store,
            client=client,
            clock=clock,
            prices=prices,
            metrics=self._m,
            ledger=self.ledger,
            anchors=anchors or [],
            retention_s=retention_s,
            evaluations=self.evaluations,
        )
        self._peers = PeerRuns(store, self.ledger, self.evaluations)
        self._runner.started = self._peers.ran
        self._lock = asyncio.Lock()
        self._requests: deque[_Request] = deque()
        self._due: float | None = None  # the tick of the scheduled run due
        self._wake = asyncio.Event()
        self._scheduler: Any = None
        self._stack = contextlib.AsyncExitStack()
        self.running: str | None = None  # the trigger of the run under way
        self.last_run: RunInfo | None = None
        self.run_finished = asyncio.Event()  # set after every run (tests and --wait)

    async def __aenter__(self) -> JudgeService:
        now = self._clock.now()
        await self._restore(now)
        self._stack = contextlib.AsyncExitStack()
        # Unwound in reverse: the scheduler stops, the workers end, unfinished runs are marked.
        self._stack.push_async_callback(self._interrupt_unfinished)
        await self._stack.enter_async_context(self._workers())
        if self._schedule:
            await self._start_scheduler(now)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _restore(self, now: float) -> None:
        """The series and the last run from the store, and runs a crash left unfinished."""
        interrupted = await self._store.interrupt_unfinished(now)
        if interrupted:
            log.warning("judge_runs_interrupted", runs=interrupted)
        await self._peers.restore(now - self._retention_s)
        runs = await self._store.runs(limit=1)
        self.last_run = runs[0] if runs else None
        self._m.tokens_today.set(await self._store.tokens_since(now - now % DAY_S))

    @contextlib.asynccontextmanager
    async def _workers(self) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as tg:
            tasks = [
                tg.create_task(self._work(), name="judge-worker"),
                tg.create_task(self._poll_requests(), name="judge-requests"),
            ]
            if self._gate is not None:
                tasks.append(tg.create_task(self._follow_role(), name="judge-role"))
            try:
                yield
            finally:
                # A run under way is cut short: what it judged is stored record by record.
                for task in tasks:
                    task.cancel()

    async def _interrupt_unfinished(self) -> None:
        await self._store.interrupt_unfinished(self._clock.now())

    async def _start_scheduler(self, now: float) -> None:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(event_loop=asyncio.get_running_loop())
        self._scheduler.add_job(
            self.fire,
            self._trigger,
            id="judge",
            coalesce=True,
            max_instances=1,
            misfire_grace_time=None,
        )
        self._scheduler.start()
        self._stack.callback(self._scheduler.shutdown, wait=False)
        if self._gate is None:
            await self._catch_up(now)  # in a cluster: when this node takes the role

    async def _catch_up(self, now: float) -> None:
        """Fires missed while no node of ours held the schedule (the daemon was down, or the
        role was between holders) are coalesced into one run now."""
        if not self.holds_role:
            return
        last = await self._store.runs(limit=1, trigger="schedule")
        if last:
            started = datetime.fromtimestamp(last[0].started_at, UTC)
            missed = self._trigger.get_next_fire_time(started, started)
            if missed is not None and missed.timestamp() < now:
                log.info("judge_missed_run", last_run_at=last[0].started_at)
                self._mark_due(tick_at(self._trigger, now))

    async def _follow_role(self) -> None:
        """Each time this node takes the judge role: runs its predecessor left `running` are
        over (the other nodes' series read past them), and a tick missed meanwhile runs."""
        assert self._gate is not None
        held = False
        while True:
            if self._gate.held and not held:
                await self._took_role(self._clock.now())
            held = self._gate.held
            await self._gate.wait_change()

    async def _took_role(self, now: float) -> None:
        try:
            ended = await self._store.interrupt_unfinished(now, others=True)
            if ended:
                log.warning("judge_runs_interrupted", runs=ended, reason="previous_holder")
            if self._schedule:
                await self._catch_up(now)
        except STORE_ERRORS as exc:  # the next tick runs as usual
            log.warning("judge_take_over_failed", error=str(exc))

    @property
    def holds_role(self) -> bool:
        """Whether this node runs the schedule and the requests (the judge role)."""
        return self._gate is None or self._gate.held

    async def fire(self) -> None:
        """The scheduler's job (tests call it after moving a fake clock): mark a run due for
        the tick just passed; never a second one while one waits or runs."""
        if not self.holds_role:
            self._m.runs_skipped.labels("standby").inc()
            log.debug("judge_run_skipped", reason="standby")
            return
        self._mark_due(tick_at(self._trigger, self._clock.now()))

    def _mark_due(self, tick: float) -> None:
        if self._due is not None or self.running == "schedule":
            self._m.runs_skipped.labels("still_running").inc()
            log.warning("judge_run_skipped", reason="still_running")
            return
        self._due = tick
        self._wake.set()

    def request(self, app: str | None = None, request_id: int | None = None) -> None:
        """Queue a run outside the schedule (run-now)."""
        self._requests.append(_Request("run-now", app, request_id))
        self._wake.set()

    async def _work(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._requests or self._due is not None:
                if self._requests:
                    req = self._requests.popleft()
                else:
                    req, self._due = _Request("schedule", None, None, self._due), None
                try:
                    await self._run(req)
                except* STORE_ERRORS as errors:  # the store, not the judge: next run
                    self._m.runs.labels("failed").inc()
                    log.error(
                        "judge_run_failed", trigger=req.trigger, error=str(errors.exceptions[0])
                    )

    async def _run(self, req: _Request) -> None:
        if req.tick is None:
            await self.run_once(req.trigger, app=req.app, request_id=req.request_id)
            return
        if await self._run_keyed(req.trigger, f"schedule:{req.tick:.3f}") is None:
            self._m.runs_skipped.labels("tick_taken").inc()
            log.info("judge_run_skipped", reason="tick_taken", tick=req.tick)

    async def _poll_requests(self) -> None:
        """Requests (the role's holder takes them) and the runs other nodes finished."""
        while True:
            taken: list[tuple[int, str | None]] = []
            try:
                if self.holds_role:
                    taken = await self._store.take_requests(self._clock.now())
            except STORE_ERRORS as exc:  # e.g. locked for longer than busy_timeout: next poll
                log.warning("judge_requests_unreadable", error=str(exc))
            for request_id, app in taken:
                log.info("judge_run_requested", app=app, request_id=request_id)
                self.request(app, request_id)
            try:
                if await self._peers.read():
                    self.last_run = (await self._store.runs(limit=1))[0]
            except STORE_ERRORS as exc:  # the next poll reads on from where this one stopped
                log.warning("judge_runs_unreadable", error=str(exc))
            await asyncio.sleep(self._poll_interval_s)

    async def run_once(
        self, trigger: str = "manual", *, app: str | None = None, request_id: int | None = None
    ) -> RunInfo:
        """One run, after any run under way; returns how it ended."""
        info = await self._run_keyed(trigger, None, app=app, request_id=request_id)
        assert info is not None  # a run without a key always starts
        return info

    async def _run_keyed(
        self,
        trigger: str,
        run_key: str | None,
        *,
        app: str | None = None,
        request_id: int | None = None,
    ) -> RunInfo | None:
        """A run, unless `run_key` is taken (None then)."""
        async with self._lock:
            self.running = trigger
            try:
                run_id = await self._runner.run(trigger, app, request_id, run_key)
            finally:
                self.running = None
        if run_id is None:
            return None
        info = await self._store.run(run_id)
        assert info is not None
        self.last_run = info
        self._m.runs.labels(info.outcome).inc()
        self.run_finished.set()
        self.run_finished = asyncio.Event()
        return info

    def series(self, window_s: float, now: float) -> list[SeriesPoint]:
        points = self.ledger.series(window_s, now)
        if self.evaluations is not None:
            points += self.evaluations.ledger.series(window_s, now)
        return points

    def status(self) -> JudgeServiceStatus:
        next_at = None
        if self._scheduler is not None:
            job = self._scheduler.get_job("judge")
            if job is not None and job.next_run_time is not None:
                next_at = job.next_run_time.timestamp()
        return JudgeServiceStatus(
            model=self._cfg.model,
            criteria=self._runner.criteria,
            running=self.running,
            next_run_at=next_at,
            last_run=self.last_run,
            max_tokens_per_day=self._cfg.max_tokens_per_day,
        )


def _evaluations(
    cfg: JudgeConfig,
    store: EvalStore | None,
    embedder: Embedder | None,
    client: JudgeClient,
    ages_s: tuple[float, float],
) -> Evaluations | None:
    """Reference scores and shadow pairs, when their store is given."""
    if store is None:
        return None
    return Evaluations(
        store=store,
        ledger=EvalLedger(max_age_s=ages_s[0], min_window_s=ages_s[1]),
        references=ReferenceScorer(
            store,
            embedder,
            key=cfg.reference_key,
            per_run=cfg.reference_scores_per_run,
            lookback_s=cfg.lookback,
        ),
        pairs=PairJudge(client),
    )
