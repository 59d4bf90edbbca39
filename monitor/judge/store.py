"""The judge's durable state as the service sees it: verdicts per record and criterion, one row
per run (tokens, cost, outcome, anchor agreement), run requests from `lookout judge run-now`,
and the sample of stored records a run grades.

Two backends implement `JudgeStore` in the storage layer: SQLite beside a node's own store
(monitor/storage/sqlite_judge.py) and PostgreSQL, shared by a cluster's nodes
(monitor/storage/pg_judge.py), where a scheduled run's key lets one node per tick in.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from lookout.errors import StoreError

if TYPE_CHECKING:
    from lookout.detectors.judge import Verdict

# What a store's failure raises, on either backend: a run ends `failed`, the service goes on.
STORE_ERRORS = (sqlite3.Error, OSError, StoreError)
RUN_COLUMNS = (
    "id, started_at, finished_at, trigger, app, outcome, detail, judged, failed, skipped,"
    " input_tokens, output_tokens, cost, agreement, anchors"
)
VERDICT_COLUMNS = (
    "record_id, criterion, app, model, run_id, judged_at, passed, score, reasoning, judge_model"
)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored record a run picked."""

    id: str
    app: str
    model: str
    prompt: str | None
    response: str | None
    metadata: dict[str, Any] | None
    ood_flagged: bool
    disliked: bool = False  # a user gave it negative feedback

    @classmethod
    def of_row(cls, row: Sequence[Any]) -> Candidate:
        """From (id, app, model, prompt, response, metadata JSON, flagged, disliked)."""
        try:
            meta = json.loads(row[5]) if row[5] else None
        except ValueError:
            meta = None
        data = meta if isinstance(meta, dict) else None
        return cls(row[0], row[1], row[2], row[3], row[4], data, bool(row[6]), bool(row[7]))


@dataclass(frozen=True, slots=True)
class SampleQuery:
    since: float  # records received at or after
    per_app: int
    seed: str
    apps: Sequence[str] = ()  # empty: every app
    models: Sequence[str] = ()
    statuses: Sequence[str] = ("ok",)
    ood_first: bool = False
    feedback_first: bool = False


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    record_id: str
    criterion: str
    app: str
    model: str
    run_id: int
    judged_at: float
    passed: bool
    score: float
    reasoning: str
    judge_model: str


@dataclass(frozen=True, slots=True)
class RunInfo:
    id: int
    started_at: float
    finished_at: float | None
    trigger: str
    app: str | None
    outcome: str  # running, done, skipped, failed, interrupted
    detail: str
    judged: int
    failed: int
    skipped: int
    input_tokens: int
    output_tokens: int
    cost: float
    agreement: float | None
    anchors: int


@dataclass(frozen=True, slots=True)
class RunTotals:
    judged: int = 0
    failed: int = 0
    skipped: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost: float = 0.0


class JudgeStore(Protocol):
    """The judge's state on one backend. Every method may raise one of `STORE_ERRORS`."""

    async def candidates(self, query: SampleQuery) -> list[Candidate]:
        """Up to `per_app` records per app: unjudged first (those with negative feedback, then
        OOD-flagged ones, first if asked), each group in the order of the seeded sample key,
        so the same state picks the same ids."""
        ...

    async def start_run(
        self, now: float, trigger: str, app: str | None, run_key: str | None = None
    ) -> int | None:
        """A new run's id; None when `run_key` is already taken (another node's run)."""
        ...

    async def record(
        self, run_id: int, verdicts: Sequence[StoredVerdict], totals: RunTotals
    ) -> None:
        """One judged (or failed, or skipped) record's verdicts and the run's totals so far, in
        one transaction: a crash mid-run keeps what was judged and what it cost."""
        ...

    async def finish_run(
        self,
        run_id: int,
        now: float,
        outcome: str,
        *,
        detail: str = "",
        agreement: float | None = None,
        anchors: int = 0,
    ) -> None: ...

    async def interrupt_unfinished(self, now: float, *, others: bool = False) -> int:
        """This node's runs a crash or stop left `running`: they are over. `others`: instead
        the other nodes' (a node that takes the judge role over ends its predecessor's)."""
        ...

    async def tokens_since(self, since: float) -> int: ...

    async def runs(self, limit: int = 20, trigger: str | None = None) -> list[RunInfo]:
        """Newest first."""
        ...

    async def runs_after(self, run_id: int, limit: int) -> list[RunInfo]:
        """The first `limit` runs with a larger id, oldest first."""
        ...

    async def run(self, run_id: int) -> RunInfo | None: ...

    async def verdicts_since(self, since: float) -> list[StoredVerdict]: ...

    async def verdicts_of_run(self, run_id: int) -> list[StoredVerdict]: ...

    async def verdicts_for(self, record_id: str) -> list[StoredVerdict]: ...

    async def failures(self, limit: int = 20) -> list[dict[str, Any]]:
        """The newest failing verdicts with their records' texts, newest first."""
        ...

    async def agreements_since(self, since: float) -> list[tuple[float, float, int]]:
        """(finished_at, agreement, anchor verdicts) of runs that judged anchors."""
        ...

    async def request_run(self, now: float, app: str | None) -> int:
        """A run request for the daemon (from `lookout judge run-now`)."""
        ...

    async def take_requests(self, now: float) -> list[tuple[int, str | None]]:
        """The requests nobody took yet, each taken once (across nodes), oldest first."""
        ...

    async def link_request(self, request_id: int, run_id: int) -> None: ...

    async def request_state(self, request_id: int) -> tuple[float | None, int | None]:
        """(taken_at, run_id) of a request."""
        ...

    async def prune(self, before: float) -> None: ...


def stored(
    verdict: Verdict, candidate: Candidate, run_id: int, at: float, judge_model: str
) -> StoredVerdict:
    v, c = verdict, candidate
    return StoredVerdict(
        c.id, v.criterion, c.app, c.model, run_id, at, v.passed, v.score, v.reasoning, judge_model
    )
