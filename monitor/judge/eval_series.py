"""The series of the judge's reference scores and pairwise verdicts, from recent ones kept in
memory (bounded) and restored from the eval store at start.

`judge_reference_similarity{app, model, method}`: the mean similarity of responses to their
reference answers, `method` being `string` (1 - Jaro-Winkler distance) or `embedding` (cosine
with the configured embedder). `judge_preference{app, model, shadow_model}`: over the graded
pairs, the share where the shadow model's answer won minus the share where production's won
(-1 to 1; ties and inconsistent pairs count as no preference). Label values are bounded: per
app, past `max_models` models (or model pairs) the least graded fold into `other`.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lookout.detectors.pairwise import PairOutcome, preference
from lookout.series import OTHER, SeriesPoint

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from lookout.monitor.judge.eval_store import ReferenceScore, StoredPair


@dataclass(frozen=True, slots=True)
class ScoredReference:
    at: float
    app: str
    model: str
    string: float
    embedding: float | None

    @classmethod
    def of(cls, s: ReferenceScore) -> ScoredReference:
        return cls(s.scored_at, s.app, s.model, s.string_similarity, s.embedding_similarity)


@dataclass(frozen=True, slots=True)
class GradedPair:
    at: float
    app: str
    model: str
    shadow_model: str
    outcome: PairOutcome

    @classmethod
    def of(cls, p: StoredPair) -> GradedPair:
        return cls(p.judged_at, p.app, p.model, p.shadow_model, PairOutcome(p.outcome))


def _bounded(keys: Iterable[tuple[str, str]], max_per_app: int) -> dict[tuple[str, str], str]:
    """(app, key) -> the label value: the most frequent keys of each app keep theirs, the rest
    fold into `other` (ties broken by name, so the folding is stable)."""
    counts = Counter(keys)
    per_app: dict[str, list[tuple[int, str]]] = {}
    for (app, key), n in counts.items():
        per_app.setdefault(app, []).append((-n, key))
    out = {}
    for app, ranked in per_app.items():
        for i, (_, key) in enumerate(sorted(ranked)):
            out[(app, key)] = key if i < max_per_app else OTHER
    return out


class EvalLedger:
    def __init__(
        self,
        *,
        max_age_s: float,
        min_window_s: float,
        max_entries: int = 100_000,
        max_models: int = 10,
    ) -> None:
        self._max_age_s = max_age_s
        self._min_window_s = min_window_s
        self._max_models = max_models
        self._references: deque[ScoredReference] = deque(maxlen=max_entries)
        self._pairs: deque[GradedPair] = deque(maxlen=max_entries)

    def add_reference(self, scored: ScoredReference) -> None:
        self._references.append(scored)

    def add_pair(self, pair: GradedPair) -> None:
        self._pairs.append(pair)

    def prune(self, now: float) -> None:
        cutoff = now - self._max_age_s
        for entries in (self._references, self._pairs):
            while entries and entries[0].at < cutoff:
                entries.popleft()

    def series(self, window_s: float, now: float) -> list[SeriesPoint]:
        since = now - max(window_s, self._min_window_s)
        refs = [r for r in self._references if since < r.at <= now]
        pairs = [p for p in self._pairs if since < p.at <= now]
        return self._similarity(refs) + self._preference(pairs)

    def _similarity(self, refs: list[ScoredReference]) -> list[SeriesPoint]:
        names = _bounded(((r.app, r.model) for r in refs), self._max_models)
        values: dict[tuple[str, str, str], list[float]] = {}
        for r in refs:
            model = names[(r.app, r.model)]
            values.setdefault((r.app, model, "string"), []).append(r.string)
            if r.embedding is not None:
                values.setdefault((r.app, model, "embedding"), []).append(r.embedding)
        return [
            SeriesPoint(
                "judge_reference_similarity",
                (("app", app), ("model", model), ("method", method)),
                sum(v) / len(v),
                len(v),
            )
            for (app, model, method), v in sorted(values.items())
        ]

    def _preference(self, pairs: list[GradedPair]) -> list[SeriesPoint]:
        key = "\x1f".join
        names = _bounded(((p.app, key((p.model, p.shadow_model))) for p in pairs), self._max_models)
        outcomes: dict[tuple[str, str, str], list[PairOutcome]] = {}
        for p in pairs:
            folded = names[(p.app, key((p.model, p.shadow_model)))]
            model, shadow = (OTHER, OTHER) if folded == OTHER else (p.model, p.shadow_model)
            outcomes.setdefault((p.app, model, shadow), []).append(p.outcome)
        return [
            SeriesPoint(
                "judge_preference",
                (("app", app), ("model", model), ("shadow_model", shadow)),
                preference(v),
                len(v),
            )
            for (app, model, shadow), v in sorted(outcomes.items())
        ]

    def outcome_counts(self, window_s: float, now: float) -> dict[str, int]:
        """Pairs by outcome over the window: how many were inconsistent, for status."""
        since = now - max(window_s, self._min_window_s)
        counts = Counter(p.outcome.value for p in self._pairs if since < p.at <= now)
        return {o.value: counts.get(o.value, 0) for o in PairOutcome}


class EvalCollector:
    """lookout_judge_reference_similarity{app,model,method} and
    lookout_judge_preference{app,model,shadow_model} over a window, at scrape time."""

    def __init__(self, ledger: EvalLedger, window_s: float, now: Callable[[], float]) -> None:
        self._ledger, self._window_s, self._now = ledger, window_s, now

    def collect(self) -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        families = {
            "judge_reference_similarity": GaugeMetricFamily(
                "lookout_judge_reference_similarity",
                "Mean similarity of responses to their reference answers (1 equal)",
                labels=["app", "model", "method"],
            ),
            "judge_preference": GaugeMetricFamily(
                "lookout_judge_preference",
                "Shadow pairs the shadow model won minus those production won, as a share",
                labels=["app", "model", "shadow_model"],
            ),
        }
        for p in self._ledger.series(self._window_s, self._now()):
            if p.value is not None:
                families[p.metric].add_metric([v for _, v in p.labels], p.value)
        return list(families.values())
