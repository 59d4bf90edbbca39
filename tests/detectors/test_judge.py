"""The judge's pure logic: criteria, prompts, both reply styles, polarity, deterministic picks."""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel
from pydantic import ValidationError

from lookout.detectors.errors import DetectorError
from lookout.detectors.judge import (
    CRITERIA,
    CriterionGrade,
    criteria_from,
    parse_yes_no,
    pick,
    reply_model,
    user_prompt,
    verdicts_from_reply,
    yes_no_prompt,
)


def test_criteria_are_langchains_plus_custom_ones() -> None:
    assert len(CRITERIA) == 14 and CRITERIA["conciseness"].startswith("Is the submission concise")
    crit = criteria_from(["helpfulness", "harmfulness"], {"on_brand": "Does it sound like us?"})
    assert [(c.name, c.yes_is_pass) for c in crit] == [
        ("helpfulness", True),
        ("harmfulness", False),
        ("on_brand", True),
    ]
    with pytest.raises(DetectorError, match=r"unknown judge criterion 'kindness'.*conciseness"):
        criteria_from(["kindness"], {})
    with pytest.raises(DetectorError, match="at least one"):
        criteria_from([], {})


def test_prompts_carry_the_data_the_questions_and_the_reference() -> None:
    crit = criteria_from(["correctness"], {})
    text = user_prompt("2+2?", "4", crit, reference="four")
    assert "[Input]: 2+2?" in text and "[Submission]: 4" in text and "[Reference]: four" in text
    assert CRITERIA["correctness"] in text
    assert '"Y" or "N"' in yes_no_prompt("2+2?", "4", crit[0])


@pytest.mark.parametrize(
    ("reply", "answer", "reasoning"),
    [
        ("The answer adds filler.\nTherefore not concise.\n\nN\nN", False, "Therefore not"),
        ("Step 1: it answers.\nStep 2: it is polite.\nY", True, "Step 2"),
        ("It is helpful.\n**Y**\n", True, "It is helpful."),
        ("Looks fine overall.\ny.", True, "Looks fine"),
    ],
)
def test_the_y_n_reply_format_parses(reply: str, answer: bool, reasoning: str) -> None:
    parsed_answer, parsed_reasoning = parse_yes_no(reply)
    assert parsed_answer is answer and reasoning in parsed_reasoning
    assert not parsed_reasoning.endswith(("Y", "N"))


def test_a_reply_without_a_verdict_is_an_error() -> None:
    with pytest.raises(DetectorError, match="no Y or N verdict"):
        parse_yes_no("I think it is mostly fine, yes.")


def test_a_fake_chat_model_reply_in_y_n_format_becomes_a_verdict() -> None:
    model = FakeListChatModel(responses=["The reply insults the user.\nY\nY"])
    [harm] = criteria_from(["harmfulness"], {})
    reply = model.invoke(yes_no_prompt("hi", "go away, idiot", harm))
    answer, reasoning = parse_yes_no(str(reply.content))
    reply_type = reply_model([harm])
    grade = CriterionGrade(reasoning=reasoning, answer=answer, score=1.0)
    [v] = verdicts_from_reply(reply_type.model_validate({"harmfulness": grade}), [harm])
    assert v.passed is False and v.score == 0.0 and "insults" in v.reasoning


def test_structured_replies_map_to_verdicts_with_polarity() -> None:
    crit = criteria_from(["helpfulness", "harmfulness"], {})
    reply = reply_model(crit).model_validate(
        {
            "harmfulness": {"reasoning": "benign", "answer": False, "score": 0.1},
            "helpfulness": {"reasoning": "answers it", "answer": True, "score": 0.8},
        }
    )
    helpful, harmless = verdicts_from_reply(reply, crit)
    assert (helpful.passed, helpful.score) == (True, 0.8)
    assert (harmless.passed, harmless.score) == (True, 0.9)


def test_the_reply_schema_requires_every_criterion_under_its_name() -> None:
    crit = criteria_from(["helpfulness", "harmfulness"], {"on topic": "Is it on topic?"})
    schema = reply_model(crit).model_json_schema()
    assert schema["required"] == ["helpfulness", "harmfulness", "on topic"]
    grade = {"reasoning": "r", "answer": True, "score": 0.5}
    with pytest.raises(ValidationError):
        reply_model(crit).model_validate({"helpfulness": grade, "harmfulness": grade})
    with pytest.raises(DetectorError, match="not in the schema"):
        verdicts_from_reply(reply_model(crit[:1]).model_validate({"helpfulness": grade}), crit)


def test_sampling_is_deterministic_and_prefers_unjudged_records() -> None:
    ids = [f"r{i}" for i in range(100)]
    first = pick(ids, judged=set(), size=10, seed="run")
    assert first == pick(list(reversed(ids)), judged=set(), size=10, seed="run")
    assert first != pick(ids, judged=set(), size=10, seed="other")
    again = pick(ids, judged=set(first), size=10, seed="run")
    assert not set(again) & set(first)
    # The two not yet judged come before the three judged ones.
    assert set(pick(ids[:5], judged=set(ids[:3]), size=2, seed="run")) == set(ids[3:5])
