"""The judge's series from the store: restored at start, then the runs other nodes made. In a
cluster one node holds the judge role and runs the runs, but any node may evaluate the rules
(the alerts role) or answer the API, so every node reads the runs others finished from the
shared store (docs/scale-out.md).

A run is read once it is over, in id order, with its verdicts, its anchor agreement, its shadow
pairs and the reference scores it made (stored at its start time). A node alone, whose runs are
all its own, never finds one to read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
        self._own: set[int] = set()  # runs above `_seen` in the series already (made here)
        # Runs under way when the series were restored: the records restored, by run.
        self._partial: dict[int, _Restored] = {}

    def ran(self, run_id: int) -> None:
        """A run this node starts (its series take it as it goes)."""
        self._own.add(run_id)

    async def restore(self, since: float) -> None:
        """The series from the store (what was judged since `since`), then where to read on:
        after the newest run, but of one still running only what it had not judged yet."""
        verdicts = await self._store.verdicts_since(since)
        for judged in judged_records(verdicts):
            self._ledger.add(judged)
        for at, value, count in await self._store.agreements_since(since):
            self._ledger.add_agreement(Agreement(at, value, count))
        pairs = []
        if self._evals is not None:
            for score in await self._evals.store.references_since(since):
                self._evals.ledger.add_reference(ScoredReference.of(score))
            pairs = await self._evals.store.pairs_since(since)
            for pair in pairs:
                self._evals.ledger.add_pair(GradedPair.of(pair))
        runs = await self._store.runs(limit=_BATCH)
        self._seen = max((r.id for r in runs if r.outcome != "running"), default=0)
        running = {r.id for r in runs if r.outcome == "running"}
        if running:
            self._seen = min(min(running) - 1, self._seen)
        # Finished after one still running: restored whole, not to be read again.
        self._own.update(r.id for r in runs if r.id > self._seen and r.id not in running)
        self._partial = {run_id: _Restored() for run_id in running}
        for v in verdicts:
            if v.run_id in self._partial:
                self._partial[v.run_id].records.add(v.record_id)
        for p in pairs:
            if p.run_id in self._partial:
                self._partial[p.run_id].shadows.add(p.shadow_id)

    async def read(self) -> int:
        """The runs others finished since the last read, in order; how many were read."""
        read = 0
        for run in await self._store.runs_after(self._seen, _BATCH):
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
        restored = self._partial.get(run.id, _Restored())
        verdicts = await self._store.verdicts_of_run(run.id)
        for judged in judged_records([v for v in verdicts if v.record_id not in restored.records]):
            self._ledger.add(judged)
        if run.agreement is not None and run.finished_at is not None:
            self._ledger.add_agreement(Agreement(run.finished_at, run.agreement, run.anchors))
        if self._evals is None:
            return
        for pair in await self._evals.store.pairs_since(run.started_at):
            if pair.run_id == run.id and pair.shadow_id not in restored.shadows:
                self._evals.ledger.add_pair(GradedPair.of(pair))
        if run.id in self._partial:
            return  # its reference scores were made at its start: restored already
        for score in await self._evals.store.references_since(run.started_at):
            if score.scored_at == run.started_at:
                self._evals.ledger.add_reference(ScoredReference.of(score))


@dataclass(slots=True)
class _Restored:
    """What a run still under way at the restore had stored by then."""

    records: set[str] = field(default_factory=set)  # judged
    shadows: set[str] = field(default_factory=set)  # paired


def judged_records(verdicts: list[StoredVerdict]) -> list[JudgedRecord]:
    """Stored verdicts (one per record and criterion) as judged records, oldest first."""
    grouped: dict[str, tuple[str, float, list[StoredVerdict]]] = {}
    for v in verdicts:
        grouped.setdefault(v.record_id, (v.app, v.judged_at, []))[2].append(v)
    oldest_first = sorted(grouped.items(), key=lambda g: g[1][1])
    return [JudgedRecord.of(at, app, vs, rid) for rid, (app, at, vs) in oldest_first]
