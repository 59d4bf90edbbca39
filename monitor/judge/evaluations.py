"""The judge's evaluations beside its criteria: reference scores and shadow pairs, the parts
a run needs to make them (their store, the scorer, the pair grader) and their series."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lookout.monitor.judge.eval_series import EvalLedger
    from lookout.monitor.judge.eval_store import EvalStore
    from lookout.monitor.judge.pairwise import PairJudge
    from lookout.monitor.judge.reference_scores import ReferenceScorer


@dataclass(frozen=True, slots=True)
class Evaluations:
    store: EvalStore
    ledger: EvalLedger
    references: ReferenceScorer
    pairs: PairJudge
