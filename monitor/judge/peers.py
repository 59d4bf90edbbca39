"""Runs another node made, into this node's series: in a cluster one node holds the judge role
and runs the runs, but any node may evaluate the rules (the alerts role) or answer the API, so
every node reads the runs others finished from the shared store (docs/scale-out.md).

A run is read once it is over, in id order, with its verdicts, its anchor agreement, its shadow
pairs and the reference scores it made (stored at its start time). A node alone, whose runs are
all its own, never finds one to read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookout.monitor.judge.eval_series import GradedPair, ScoredReference
from lookout.monitor.judge.series import Agreement, JudgedRecord, JudgeLedger

if TYPE_CHECKING:
    from lookout.monitor.judge.evaluations import Evaluations
    from lookout.monitor.judge.store import JudgeStore, RunInfo, StoredVerdict

_BATCH = 50  # runs read per poll; more wait for the next


class PeerRuns:
    def __init__(
        self, store: JudgeStore, ledger: JudgeLedger, evaluations: Evaluations | None
    ) -> None:
        self._store = store
        self._ledger = ledger
        self._evals = evaluations
        self._seen = 0  # every run up to this id is in the series (or not to be read)
        self._own: set[int] = set()  # runs above `_seen` this node made
        # Runs under way when the series were restored: the verdicts restored, by run.
        self._partial: dict[int, float] = {}

    def ran(self, run_id: int) -> None:
        """A run this node starts (its series take it as it goes)."""
        self._own.add(run_id)

    async def restored(self, verdicts: list[StoredVerdict]) -> None:
        """After the series were restored from `verdicts`: runs up to the newest are in them,
        but of one still running only what it had judged by then."""
        runs = await self._store.runs(limit=_BATCH)
        self._seen = max((r.id for r in runs if r.outcome != "running"), default=0)
        running = {r.id for r in runs if r.outcome == "running"}
        if running:
            self._seen = min(min(running) - 1, self._seen)
        self._partial = {run_id: float("-inf") for run_id in running}
        for v in verdicts:
            if v.run_id in self._partial:
                self._partial[v.run_id] = max(self._partial[v.run_id], v.judged_at)

    async def read(self) -> int:
        """The runs others finished since the last read, in order; how many were read."""
        fresh = sorted(
            (r for r in await self._store.runs(limit=_BATCH) if r.id > self._seen),
            key=lambda r: r.id,
        )
        read = 0
        for run in fresh:
            if run.outcome == "running":
                break  # its successors wait, so the series move in run order
            if run.id not in self._own:
                await self._read_run(run)
                read += 1
            self._own.discard(run.id)
            self._partial.pop(run.id, None)
            self._seen = run.id
        return read

    async def _read_run(self, run: RunInfo) -> None:
        after = self._partial.get(run.id)
        verdicts = [
            v
            for v in await self._store.verdicts_of_run(run.id)
            if after is None or v.judged_at > after
        ]
        grouped: dict[str, list[StoredVerdict]] = {}
        for v in verdicts:
            grouped.setdefault(v.record_id, []).append(v)
        for record_id, vs in sorted(grouped.items(), key=lambda g: g[1][0].judged_at):
            self._ledger.add(JudgedRecord.of(vs[0].judged_at, vs[0].app, vs, record_id))
        if run.agreement is not None and run.finished_at is not None:
            self._ledger.add_agreement(Agreement(run.finished_at, run.agreement, run.anchors))
        if self._evals is None:
            return
        for pair in await self._evals.store.pairs_since(run.started_at):
            if pair.run_id == run.id:
                self._evals.ledger.add_pair(GradedPair.of(pair))
        if after is not None:
            return  # its reference scores were made at its start: restored already
        for score in await self._evals.store.references_since(run.started_at):
            if score.scored_at == run.started_at:
                self._evals.ledger.add_reference(ScoredReference.of(score))
