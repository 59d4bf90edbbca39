"""Reference scoring: each judge run, stored records that carry a reference answer
(`metadata.reference`) and were not scored yet get two model-free scores, their string
similarity (1 - LangChain's string_distance, Jaro-Winkler) and their embedding similarity
(cosine, with the detectors' configured embedder), stored per record and fed to the series.

No judge model is called, so no token is spent and the daily cap does not apply. The
computation runs in a thread (the embedder is blocking, CPU or network).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from lookout.detectors.similarity import embedding_similarity, string_similarity
from lookout.monitor.judge.eval_series import ScoredReference
from lookout.monitor.judge.eval_store import ReferenceScore

if TYPE_CHECKING:
    from collections.abc import Sequence

    from lookout.detectors.embedders import Embedder
    from lookout.monitor.judge.eval_store import EvalStore, ReferenceCandidate

log = structlog.get_logger(__name__)

_STRING_CHARS = 4000  # Jaro-Winkler on the heads of long texts
_EMBED_CHARS = 2000  # as the detectors embed them


class ReferenceScorer:
    def __init__(
        self,
        store: EvalStore,
        embedder: Embedder | None,
        *,
        key: str,
        per_run: int,
        lookback_s: float,
    ) -> None:
        self._store = store
        self._embedder = embedder
        self._key = key
        self._per_run = per_run
        self._lookback_s = lookback_s

    async def score(self, now: float, apps: Sequence[str] = ()) -> list[ScoredReference]:
        """Score the records not scored yet (up to `per_run`, oldest first), store the scores
        and return them for the series."""
        if self._per_run == 0:
            return []
        candidates = await self._store.reference_candidates(
            now - self._lookback_s, self._key, self._per_run, apps
        )
        if not candidates:
            return []
        scores = await asyncio.to_thread(self._compute, candidates, now)
        await self._store.put_reference_scores(scores)
        log.info("judge_references_scored", records=len(scores))
        return [ScoredReference.of(s) for s in scores]

    def _embedding(self, candidates: Sequence[ReferenceCandidate]) -> list[float | None]:
        if self._embedder is None:
            return [None] * len(candidates)
        texts = [c.response[:_EMBED_CHARS] for c in candidates]
        texts += [c.reference[:_EMBED_CHARS] for c in candidates]
        try:
            rows = self._embedder.embed(texts)
        except Exception as exc:  # a network embedder's outage: string scores still count
            log.warning("judge_reference_embedding_failed", error=type(exc).__name__)
            return [None] * len(candidates)
        n = len(candidates)
        return [float(v) for v in embedding_similarity(rows[:n], rows[n:])]

    def _compute(
        self, candidates: Sequence[ReferenceCandidate], now: float
    ) -> list[ReferenceScore]:
        embedded = self._embedding(candidates)
        name = self._embedder.name if self._embedder is not None else ""
        return [
            ReferenceScore(
                c.id,
                c.app,
                c.model,
                now,
                round(
                    string_similarity(c.response[:_STRING_CHARS], c.reference[:_STRING_CHARS]), 6
                ),
                None if e is None else round(e, 6),
                name,
            )
            for c, e in zip(candidates, embedded, strict=True)
        ]
