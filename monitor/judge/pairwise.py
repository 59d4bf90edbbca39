"""Pairwise grading of shadow deployments: a shadow record (`metadata.shadow_of` names the
production record that answered the same request) is compared with its production record by
the judge model twice, each answer shown first once, and the two verdicts combine into one
outcome (detectors/pairwise.py): a preference counts only when both orders agree.

Every text is redacted and cut by the judge client before it leaves the box; the two calls'
tokens are estimated and reserved together against the daily cap by the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from lookout.detectors.errors import DetectorError
from lookout.detectors.pairwise import (
    PAIRWISE_CRITERIA,
    PairOutcome,
    Position,
    combine,
    pairwise_prompt,
    pairwise_system_prompt,
    parse_pairwise,
)
from lookout.monitor.judge.budget import estimate_tokens
from lookout.monitor.judge.client import JudgeError
from lookout.monitor.judge.eval_store import StoredPair, reasoning_json

if TYPE_CHECKING:
    from lookout.monitor.judge.client import JudgeClient
    from lookout.monitor.judge.eval_store import PairCandidate


@dataclass(frozen=True, slots=True)
class CleanPair:
    """A pair's texts as they may leave the box."""

    candidate: PairCandidate
    prompt: str
    production: str
    shadow: str
    reference: str | None
    redactions: int

    def estimate(self) -> int:
        """Both calls' tokens, generously: what the run reserves before making them."""
        texts: list[str | None] = [self.prompt, self.production, self.shadow, self.reference]
        return 2 * estimate_tokens(texts, len(PAIRWISE_CRITERIA), per_criterion_calls=False)


@dataclass(frozen=True, slots=True)
class PairGrade:
    outcome: PairOutcome
    production_first: Position
    shadow_first: Position
    reasoning: str  # both orders' reasoning, as JSON
    input_tokens: int
    output_tokens: int

    def stored(self, pair: PairCandidate, run_id: int, at: float, judge_model: str) -> StoredPair:
        return StoredPair(
            pair.shadow_id,
            pair.production_id,
            pair.app,
            pair.model,
            pair.shadow_model,
            run_id,
            at,
            self.outcome.value,
            self.production_first.value,
            self.shadow_first.value,
            self.reasoning,
            judge_model,
        )


class PairJudge:
    def __init__(self, client: JudgeClient) -> None:
        self._client = client

    def clean(self, pair: PairCandidate) -> CleanPair:
        (p, n1), (a, n2), (b, n3) = (
            self._client.clean(pair.prompt),
            self._client.clean(pair.production),
            self._client.clean(pair.shadow),
        )
        ref, n4 = self._client.clean(pair.reference)
        return CleanPair(pair, p, a, b, ref or None, n1 + n2 + n3 + n4)

    async def _ask(
        self, first: str, second: str, pair: CleanPair
    ) -> tuple[Position, str, int, int]:
        text, tokens_in, tokens_out = await self._client.ask(
            pairwise_system_prompt(), pairwise_prompt(pair.prompt, first, second, pair.reference)
        )
        try:
            verdict, reasoning = parse_pairwise(text)
        except DetectorError as exc:
            raise JudgeError(str(exc)) from exc
        return verdict, reasoning, tokens_in, tokens_out

    async def grade(self, pair: CleanPair) -> PairGrade:
        """Both orders, production first then shadow first; JudgeError if either fails."""
        one, why_one, in1, out1 = await self._ask(pair.production, pair.shadow, pair)
        two, why_two, in2, out2 = await self._ask(pair.shadow, pair.production, pair)
        return PairGrade(
            combine(one, two), one, two, reasoning_json(why_one, why_two), in1 + in2, out1 + out2
        )
