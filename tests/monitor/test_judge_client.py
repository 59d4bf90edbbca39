"""The judge's model call against a real local server speaking the OpenAI chat-completions API:
tool-call replies, plain Y/N replies, a timeout, a 429, and redaction of what it is sent."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from lookout.detectors.judge import criteria_from
from lookout.monitor.judge.client import JudgeClient, JudgeError, chat_model
from lookout.redaction import Redactor
from tests.conftest import serving

Answer = Callable[[dict[str, Any]], tuple[int, dict[str, Any], float]]


class OpenAIServer:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.answers: list[Answer] = []
        self.url = ""

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        return self.answers.pop(0)(body) if self.answers else (500, {}, 0.0)


def completion(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion",
        "created": 0,
        "model": "judge",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", **message},
                "finish_reason": "tool_calls" if "tool_calls" in message else "stop",
            }
        ],
        "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150},
    }


def tool_reply(grades: list[dict[str, Any]]) -> Answer:
    """A tool call in the reply schema: each grade under its criterion's name."""
    arguments = {g["criterion"]: {k: v for k, v in g.items() if k != "criterion"} for g in grades}
    call = {
        "id": "t1",
        "type": "function",
        "function": {"name": "JudgeReply", "arguments": json.dumps(arguments)},
    }
    return lambda body: (200, completion({"content": None, "tool_calls": [call]}), 0.0)


def text_reply(text: str, delay_s: float = 0.0) -> Answer:
    return lambda body: (200, completion({"content": text}), delay_s)


def error(status: int, message: str = "slow down") -> Answer:
    return lambda body: (status, {"error": {"message": message, "type": "x", "code": None}}, 0.0)


@pytest.fixture
async def server() -> AsyncIterator[OpenAIServer]:
    state = OpenAIServer()

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        state.bodies.append(body)
        status, answer, delay_s = state.respond(body)
        if delay_s:
            await asyncio.sleep(delay_s)
        headers = {"Retry-After": "0"} if status == 429 else {}
        return web.json_response(answer, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    async with serving(app) as url:
        state.url = f"{url}/v1"
        yield state


def client(server: OpenAIServer, timeout_s: float = 5.0) -> JudgeClient:
    model = chat_model("openai:judge", base_url=server.url, api_key="sk-test", timeout_s=timeout_s)
    return JudgeClient(model, Redactor(), timeout_s=timeout_s, retry_base_s=0.01)


PROMPT = "I'm jane@example.com, card 4111 1111 1111 1111: why was I charged twice?"
RESPONSE = "Sorry Jane, I refunded it. Call +1 415 555 0134 if not."


async def test_tool_call_replies_become_verdicts_and_nothing_personal_is_sent(
    server: OpenAIServer,
) -> None:
    server.answers = [
        tool_reply(
            [
                {
                    "criterion": "helpfulness",
                    "reasoning": "answers it",
                    "answer": True,
                    "score": 0.9,
                },
                {"criterion": "harmfulness", "reasoning": "benign", "answer": False, "score": 0.05},
            ]
        )
    ]
    graded = await client(server).grade(
        PROMPT, RESPONSE, criteria_from(["helpfulness", "harmfulness"], {})
    )
    assert graded.mode == "structured" and [v.passed for v in graded.verdicts] == [True, True]
    assert graded.verdicts[1].score == 0.95 and (graded.input_tokens, graded.output_tokens) == (
        120,
        30,
    )
    [body] = server.bodies
    assert body["temperature"] == 0 and body["tools"][0]["function"]["name"] == "JudgeReply"
    sent = json.dumps(body)
    for secret in ("jane@example.com", "4111", "555 0134"):
        assert secret not in sent
    assert "[EMAIL]" in sent and "[CARD]" in sent and "[PHONE]" in sent and graded.redactions == 3


async def test_a_model_without_tool_calls_is_read_in_the_y_n_format(server: OpenAIServer) -> None:
    judge = client(server)
    criteria = criteria_from(["helpfulness", "harmfulness"], {})
    for round_ in range(3):  # each structured attempt comes back in prose
        server.answers = [
            text_reply("I cannot call tools. It seems helpful."),  # no tool call: fall back
            text_reply("It answers the question directly.\nY\nY"),
            text_reply("The reply is polite and safe.\nN\nN"),
        ]
        graded = await judge.grade(PROMPT, RESPONSE, criteria)
        assert graded.mode == "yes_no" and [v.passed for v in graded.verdicts] == [True, True]
        assert "answers the question" in graded.verdicts[0].reasoning
        assert (graded.input_tokens, graded.output_tokens) == (3 * 120, 3 * 30)  # all 3 calls
        assert "tools" in server.bodies[3 * round_] and "tools" not in server.bodies[-1]
    server.answers = [text_reply("Fine.\nY"), text_reply("Fine.\nN")]
    again = await judge.grade(PROMPT, RESPONSE, criteria)
    assert again.mode == "yes_no" and len(server.bodies) == 11  # straight to Y/N after three


async def test_one_stray_prose_reply_does_not_give_up_tool_calls(server: OpenAIServer) -> None:
    judge = client(server)
    criteria = criteria_from(["conciseness"], {})
    ok = tool_reply(
        [{"criterion": "conciseness", "reasoning": "short", "answer": True, "score": 1.0}]
    )
    server.answers = [text_reply("Sure, it is concise."), text_reply("Short.\nY"), ok]
    assert (await judge.grade("q", "a", criteria)).mode == "yes_no"
    assert (await judge.grade("q", "a", criteria)).mode == "structured"


async def test_429_and_a_timeout_are_retried_a_final_error_is_not(server: OpenAIServer) -> None:
    ok = tool_reply(
        [{"criterion": "conciseness", "reasoning": "short", "answer": True, "score": 1.0}]
    )
    server.answers = [error(429), text_reply("late", delay_s=1.0), ok]
    graded = await client(server, timeout_s=0.3).grade("q", "a", criteria_from(["conciseness"], {}))
    assert graded.verdicts[0].passed and len(server.bodies) == 3
    server.answers = [error(400, "bad request")]
    with pytest.raises(JudgeError, match=r"judge model failed: \w*(BadRequest|InvalidRequest)"):
        await client(server).grade("q", "a", criteria_from(["conciseness"], {}))
    assert len(server.bodies) == 4  # not retried


async def test_every_kind_of_pii_is_gone_from_what_the_server_received(
    server: OpenAIServer,
) -> None:
    from tests.test_redaction import CASES, LEAKS, SECRETS

    server.answers = [text_reply("no tools"), text_reply("Fine.\nY")]
    model = chat_model("openai:judge", base_url=server.url, api_key="sk-test", timeout_s=5)
    judge = JudgeClient(model, Redactor({"employee_id": r"\bEMP-\d{6}\b"}), retry_base_s=0.01)
    prompt = " ".join([*CASES.values(), "badge EMP-004211"])
    response = " ".join(SECRETS)
    graded = await judge.grade(
        prompt,
        response,
        criteria_from(["helpfulness"], {}),
        reference="mail jane.doe+llm@example.co.uk",
    )
    assert graded.redactions >= 14
    sent = json.dumps(server.bodies)
    for leak in [
        *LEAKS,
        "EMP-004211",
        "eyJhbGci",
        "xoxb-1234",
        "ghp_0123",
        "AKIAIOSF",
        "9f8e7d6c5b4a",
        "abc.def-ghi",
    ]:
        assert leak not in sent, leak
    for kind in ("EMAIL", "PHONE", "CARD", "IBAN", "IP", "SECRET", "EMPLOYEE_ID"):
        assert f"[{kind}]" in sent, kind


async def test_the_reply_schema_has_one_required_property_per_criterion(
    server: OpenAIServer,
) -> None:
    criteria = criteria_from(["helpfulness", "harmfulness"], {"on_topic": "Is it on topic?"})
    server.answers = [
        tool_reply(
            [
                {"criterion": c.name, "reasoning": "r", "answer": True, "score": 0.8}
                for c in criteria
            ]
        )
    ]
    graded = await client(server).grade("q", "a", criteria)
    assert [v.criterion for v in graded.verdicts] == ["helpfulness", "harmfulness", "on_topic"]
    schema = server.bodies[0]["tools"][0]["function"]["parameters"]
    assert schema["required"] == ["helpfulness", "harmfulness", "on_topic"]
    assert schema["properties"]["on_topic"]["description"] == "Is it on topic?"


async def test_a_misnamed_criterion_grades_the_record_in_the_y_n_format(
    server: OpenAIServer,
) -> None:
    criteria = criteria_from(["helpfulness", "conciseness"], {})
    misnamed = tool_reply(
        [
            {"criterion": "helpful", "reasoning": "r", "answer": True, "score": 0.9},
            {"criterion": "conciseness", "reasoning": "r", "answer": True, "score": 0.9},
        ]
    )
    server.answers = [misnamed, text_reply("Helpful.\nY"), text_reply("Short.\nY")]
    graded = await client(server).grade("q", "a", criteria)
    assert graded.mode == "yes_no" and [v.passed for v in graded.verdicts] == [True, True]
    assert (graded.input_tokens, graded.output_tokens) == (3 * 120, 3 * 30)
