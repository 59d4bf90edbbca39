"""Pairwise verdicts (LangChain's pairwise_string format), the position swap that cancels
order bias, the preference figure, and the model-free similarity to a reference answer."""

from __future__ import annotations

import numpy as np
import pytest

from lookout.detectors.embedders import StaticEmbedder
from lookout.detectors.errors import DetectorError
from lookout.detectors.pairwise import (
    PairOutcome,
    Position,
    combine,
    pairwise_prompt,
    parse_pairwise,
    preference,
)
from lookout.detectors.similarity import embedding_similarity, string_similarity

A, B, C = Position.FIRST, Position.SECOND, Position.TIE


@pytest.mark.parametrize(
    ("production_first", "shadow_first", "outcome"),
    [
        (B, A, PairOutcome.SHADOW),  # the shadow's answer wins in both positions
        (A, B, PairOutcome.PRODUCTION),
        (C, C, PairOutcome.TIE),
        (A, A, PairOutcome.INCONSISTENT),  # whatever comes first wins: order bias
        (B, B, PairOutcome.INCONSISTENT),
        (A, C, PairOutcome.INCONSISTENT),
        (C, A, PairOutcome.INCONSISTENT),
    ],
)
def test_a_preference_counts_only_when_both_orders_agree(
    production_first: Position, shadow_first: Position, outcome: PairOutcome
) -> None:
    assert combine(production_first, shadow_first) is outcome


def test_the_last_verdict_in_a_reply_counts_and_a_reply_without_one_is_an_error() -> None:
    reply = "A cites [[B]]'s steps, but B is right.\nFinal verdict: [[ b ]]"
    assert parse_pairwise(reply) == (B, "A cites [[B]]'s steps, but B is right.\nFinal verdict:")
    assert parse_pairwise("Both fine. [[C]]")[0] is C
    with pytest.raises(DetectorError):
        parse_pairwise("A is better.")
    with pytest.raises(DetectorError):
        parse_pairwise("[[D]]")


def test_preference_is_shadow_wins_minus_production_wins_over_all_pairs() -> None:
    outcomes = [PairOutcome.SHADOW] * 3 + [PairOutcome.PRODUCTION] + [PairOutcome.TIE]
    assert preference(outcomes) == pytest.approx(0.4)
    assert preference([PairOutcome.INCONSISTENT] * 4) == 0.0
    with pytest.raises(DetectorError):
        preference([])


def test_the_prompt_shows_the_answers_in_the_order_given_and_the_reference() -> None:
    text = pairwise_prompt("How?", "first answer", "second answer", "gold")
    assert text.index("first answer") < text.index("second answer")
    assert "Assistant A's Answer]\nfirst answer" in text and "gold" in text
    assert "gold" not in pairwise_prompt("How?", "x", "y")


def test_string_similarity_is_jaro_winkler() -> None:
    assert string_similarity("Reset it in Settings.", "Reset it in Settings.") == 1.0
    # The textbook Jaro-Winkler pair: Jaro 0.944, 3 common prefix characters.
    assert string_similarity("MARTHA", "MARHTA") == pytest.approx(0.9611, abs=1e-4)
    assert string_similarity("abc", "xyz") == 0.0


def test_embedding_similarity_is_the_cosine_of_rows() -> None:
    u = np.array([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]], dtype=np.float32)
    v = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert embedding_similarity(u, v) == pytest.approx([1.0, 2**-0.5, 0.0])
    embedder = StaticEmbedder(None)  # the packaged model
    rows = embedder.embed(
        [
            "Open Settings and choose Reset password.",
            "Go to Settings, then Reset password.",
            "The train to Lyon leaves at nine.",
        ]
    )
    assert embedding_similarity(rows[[1]], rows[[1]])[0] == pytest.approx(1.0, abs=1e-6)
    paraphrase = embedding_similarity(rows[[0]], rows[[1]])[0]
    other = embedding_similarity(rows[[0]], rows[[2]])[0]
    assert paraphrase > other + 0.2
