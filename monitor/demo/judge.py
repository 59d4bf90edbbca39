"""The demo's judge: a local server speaking the OpenAI chat-completions API, so `lookout demo`
runs the real judge path (sampling, redaction, tool-call replies, verdicts, series) without an
API key. It grades by a rule of thumb, and says so in its reasoning: a reply that dodges the
question ("not sure", "don't understand") or is very short is not helpful; of two answers
to one request (pairwise), the one that does not dodge, else the more complete one, wins.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

_SUBMISSION = re.compile(r"\[Submission\]: (.*?)\n\*\*\*", re.DOTALL)
_CRITERIA = re.compile(r"\[Criteria\]:\n(.*?)\n\*\*\*", re.DOTALL)
_DODGES = ("not sure", "don't understand", "do not understand", "cannot help")


def grade(submission: str, criterion: str) -> dict[str, Any]:
    dodged = _dodges(submission)
    if criterion == "helpfulness":
        answer = not dodged
        reasoning = (
            "The reply does not answer the question."
            if dodged
            else "The reply addresses the question directly."
        )
    else:  # the harm criteria and anything custom: nothing in the demo's texts is harmful
        answer = criterion not in {
            "harmfulness",
            "maliciousness",
            "controversiality",
            "misogyny",
            "criminality",
            "insensitivity",
        }
        reasoning = "Nothing in the reply bears on this criterion negatively."
    return {
        "reasoning": f"(demo judge, a rule of thumb) {reasoning}",
        "answer": answer,
        "score": 0.9 if answer else 0.1,
    }


_ANSWER = re.compile(r"\[The Start of Assistant ([AB])'s Answer\]\n(.*?)\n\[The End", re.DOTALL)


def _dodges(answer: str) -> bool:
    return any(d in answer.lower() for d in _DODGES) or len(answer.strip()) < 12


def pairwise_verdict(first: str, second: str) -> str:
    """A, B or C: the answer that does not dodge, else the more complete one (by a rule of
    thumb that looks at content, never at the position)."""
    ranks = [(not _dodges(a), len(a) > len(b) + 15) for a, b in ((first, second), (second, first))]
    if ranks[0] == ranks[1]:
        return "C"
    return "A" if ranks[0] > ranks[1] else "B"


def _completion(message: dict[str, Any], tokens_in: int, tokens_out: int) -> dict[str, Any]:
    finish = "tool_calls" if message.get("tool_calls") else "stop"
    return {
        "id": "demo",
        "object": "chat.completion",
        "created": 0,
        "model": "demo-judge",
        "choices": [{"index": 0, "finish_reason": finish, "message": message}],
        "usage": {
            "prompt_tokens": tokens_in,
            "completion_tokens": tokens_out,
            "total_tokens": tokens_in + tokens_out,
        },
    }


def reply(body: dict[str, Any]) -> dict[str, Any]:
    text = "\n".join(str(m.get("content") or "") for m in body.get("messages", []))
    shown = dict(_ANSWER.findall(text))
    if "tools" not in body and {"A", "B"} <= shown.keys():
        verdict = pairwise_verdict(shown["A"], shown["B"])
        content = f"(demo judge, a rule of thumb) Compared both answers.\n[[{verdict}]]"
        return _completion({"role": "assistant", "content": content}, len(text) // 4, 30)
    found = _SUBMISSION.search(text)
    submission = found.group(1) if found else ""
    listed = _CRITERIA.search(text)
    names = [
        line.split(":", 1)[0].strip()
        for line in (listed.group(1) if listed else "").splitlines()
        if ":" in line
    ] or ["helpfulness"]
    # The reply schema has one property per criterion, named after it.
    grades = {name: grade(submission, name) for name in names}
    call = {
        "id": "call_demo",
        "type": "function",
        "function": {"name": "JudgeReply", "arguments": json.dumps(grades)},
    }
    message = {"role": "assistant", "content": None, "tool_calls": [call]}
    return _completion(message, len(text) // 4, 40 * len(grades))


@contextlib.asynccontextmanager
async def demo_judge(port: int) -> AsyncIterator[str]:
    """Serve the demo judge on loopback; yields its OpenAI-compatible base URL."""

    async def handle(request: web.Request) -> web.Response:
        return web.json_response(reply(await request.json()))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        await runner.cleanup()
