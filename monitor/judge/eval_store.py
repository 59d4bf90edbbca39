"""The judge's reference scores and pairwise verdicts, as the service sees them.

Reference scores: one row per record that carries a reference answer (string and embedding
similarity). Pairs: one row per shadow record graded against the production record it names
(`metadata.shadow_of`), with both orders' verdicts and the outcome. Both tables feed the series
at start and keep a record from being scored or graded twice. `EvalStore` has a SQLite backend
beside a node's store (monitor/storage/sqlite_evals.py) and a PostgreSQL one shared by a
cluster's nodes (monitor/storage/pg_evals.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

REFERENCE_COLUMNS = (
    "record_id, app, model, scored_at, string_similarity, embedding_similarity, embedder"
)
PAIR_COLUMNS = (
    "shadow_id, production_id, app, model, shadow_model, run_id, judged_at, outcome,"
    " production_first, shadow_first, reasoning, judge_model"
)


@dataclass(frozen=True, slots=True)
class ReferenceCandidate:
    id: str
    app: str
    model: str
    response: str
    reference: str


@dataclass(frozen=True, slots=True)
class ReferenceScore:
    record_id: str
    app: str
    model: str
    scored_at: float
    string_similarity: float
    embedding_similarity: float | None  # None: no embedder
    embedder: str


@dataclass(frozen=True, slots=True)
class PairCandidate:
    """A shadow record and the production record it names, same app."""

    app: str
    production_id: str
    model: str
    shadow_id: str
    shadow_model: str
    prompt: str
    production: str  # the production record's response
    shadow: str
    reference: str | None

    @classmethod
    def of_row(cls, row: Sequence[Any]) -> PairCandidate:
        """From (app, production id, model, shadow id, shadow model, prompt, production
        response, shadow response, reference): a reference that is no text is none."""
        ref = row[8] if isinstance(row[8], str) and row[8] else None
        return cls(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7], ref)


@dataclass(frozen=True, slots=True)
class StoredPair:
    shadow_id: str
    production_id: str
    app: str
    model: str
    shadow_model: str
    run_id: int
    judged_at: float
    outcome: str  # shadow, production, tie, inconsistent
    production_first: str  # the verdict with the production answer shown first: A, B or C
    shadow_first: str
    reasoning: str
    judge_model: str


@dataclass(frozen=True, slots=True)
class PairQuery:
    since: float  # shadow records received at or after
    shadow_key: str
    reference_key: str
    per_app: int
    apps: Sequence[str] = ()  # empty: every app


class EvalStore(Protocol):
    """Reference scores and shadow pairs on one backend."""

    async def reference_candidates(
        self, since: float, key: str, limit: int, apps: Sequence[str] = ()
    ) -> list[ReferenceCandidate]:
        """Records received since `since` with a response and a text `metadata[key]`, not yet
        scored, oldest first."""
        ...

    async def pair_candidates(self, query: PairQuery) -> list[PairCandidate]:
        """Up to `per_app` ungraded shadow records per app whose production record (named by
        `metadata[shadow_key]`, same app) is stored with a response, newest first."""
        ...

    async def unpaired_shadows(self, query: PairQuery) -> int:
        """How many ungraded shadow records in the query's reach name no stored production
        record (never sent, in another app, or not kept)."""
        ...

    async def put_reference_scores(self, scores: Sequence[ReferenceScore]) -> None: ...

    async def put_pair(self, pair: StoredPair) -> None: ...

    async def references_since(self, since: float) -> list[ReferenceScore]: ...

    async def pairs_since(self, since: float) -> list[StoredPair]: ...

    async def evaluations_for(self, record_id: str) -> dict[str, Any]:
        """A record's reference score and the pairs it is in (as production or shadow)."""
        ...

    async def prune(self, before: float) -> None: ...


def reasoning_json(production_first: str, shadow_first: str) -> str:
    """Both orders' reasoning, as one stored text."""
    return json.dumps({"production_first": production_first, "shadow_first": shadow_first})
