"""The judge's model call: any LangChain chat model (`init_chat_model` spec, or an
OpenAI-compatible `base_url`), temperature 0, asked through tool calling for a reply schema
built for the criteria, falling back to the Y/N reply format for models without it and for
any reply that does not fit the schema.

Everything sent is redacted first and truncated; calls are bounded in number, each under a
timeout; only transient failures (timeouts, connection errors, 429, 5xx) are retried, with
capped jittered backoff that honours Retry-After.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

from lookout.backoff import backoff_s
from lookout.detectors.errors import DetectorError
from lookout.detectors.judge import (
    Criterion,
    Verdict,
    parse_yes_no,
    reply_model,
    system_prompt,
    user_prompt,
    verdict,
    verdicts_from_reply,
    yes_no_prompt,
)
from lookout.errors import LookoutError
from lookout.monitor.config.judge import JudgeConfig

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from lookout.redaction import Redactor


_MISSES_BEFORE_YES_NO = 3  # replies in a row without a tool call


class JudgeError(LookoutError):
    """The judge could not grade a record (after retries, or a final error)."""


@dataclass(frozen=True, slots=True)
class GradeResult:
    verdicts: list[Verdict]
    input_tokens: int
    output_tokens: int
    mode: str  # "structured" or "yes_no"
    redactions: int  # PII findings removed before sending


def chat_model(spec: str, *, base_url: str | None, api_key: str | None, timeout_s: float) -> Any:
    """A chat model from an `init_chat_model` spec; its own retries off (we retry here)."""
    from langchain.chat_models import init_chat_model

    kwargs: dict[str, Any] = {"temperature": 0, "timeout": timeout_s, "max_retries": 0}
    if base_url:
        kwargs["base_url"] = base_url
    if api_key:
        kwargs["api_key"] = api_key
    try:
        return init_chat_model(spec, **kwargs)
    except Exception as exc:  # providers raise their own types (missing package, credentials)
        raise JudgeError(f"judge.model {spec!r}: {exc}") from exc


def _transient(exc: BaseException) -> tuple[bool, float | None]:
    """Whether to retry, and the server's Retry-After if it gave one."""
    if isinstance(exc, TimeoutError | ConnectionError):
        return True, None
    try:
        import openai
    except ImportError:  # pragma: no cover - langchain-openai is a dependency
        return False, None
    if isinstance(exc, openai.APITimeoutError | openai.APIConnectionError):
        return True, None
    if isinstance(exc, openai.APIStatusError):
        code = exc.status_code
        if code == 429 or code >= 500:
            after = exc.response.headers.get("retry-after")
            return True, float(after) if after and after.isdigit() else None
    return False, None


def _usage(message: Any) -> tuple[int, int]:
    usage = getattr(message, "usage_metadata", None) or {}
    return int(usage.get("input_tokens", 0)), int(usage.get("output_tokens", 0))


class JudgeClient:
    def __init__(
        self,
        model: BaseChatModel,
        redactor: Redactor,
        *,
        max_concurrency: int = 4,
        timeout_s: float = 60.0,
        attempts: int = 3,
        max_chars: int = 4000,
        retry_base_s: float = 1.0,
        rng: random.Random | None = None,
    ) -> None:
        self._model = model
        self._redactor = redactor
        self._slots = asyncio.Semaphore(max_concurrency)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._max_chars = max_chars
        self._retry_base_s = retry_base_s
        self._rng = rng or random.Random()
        self._structured: dict[tuple[Criterion, ...], Any] = {}  # per set of criteria
        self._tools_unsupported = False
        self._structured_misses = 0

    @property
    def per_criterion_calls(self) -> bool:
        """Whether a record costs one call per criterion (a model without tool calling)."""
        return self._tools_unsupported

    def _clean(self, text: str | None) -> tuple[str, int]:
        redacted = self._redactor.redact_cut(text or "", self._max_chars)
        return redacted.text, redacted.total

    def clean(self, text: str | None) -> tuple[str, int]:
        """The text as it may leave the box (redacted, then cut), and the findings removed."""
        return self._clean(text)

    async def ask(self, system: str, user: str) -> tuple[str, int, int]:
        """One plain chat call on already cleaned texts, retried like the rest: (the reply's
        text, input tokens, output tokens)."""
        message: AIMessage = await self._call(
            self._model, [SystemMessage(system), HumanMessage(user)]
        )
        return (str(message.content), *_usage(message))

    async def _call(self, runnable: Any, messages: list[Any]) -> Any:
        for attempt in range(self._attempts):
            try:
                async with self._slots, asyncio.timeout(self._timeout_s):
                    return await runnable.ainvoke(messages)
            except Exception as exc:
                retry, after = _transient(exc)
                if not retry:
                    raise JudgeError(f"the judge model failed: {type(exc).__name__}") from exc
                if attempt + 1 == self._attempts:
                    raise JudgeError(
                        f"the judge model failed {self._attempts} times: {type(exc).__name__}"
                    ) from exc
                await asyncio.sleep(
                    backoff_s(
                        attempt,
                        self._rng,
                        base_s=self._retry_base_s,
                        cap_s=60.0,
                        retry_after_s=after,
                    )
                )
        raise AssertionError("unreachable")

    async def grade(
        self,
        prompt: str | None,
        response: str | None,
        criteria: list[Criterion],
        reference: str | None = None,
    ) -> GradeResult:
        (p, n1), (r, n2), (ref, n3) = (
            self._clean(prompt),
            self._clean(response),
            self._clean(reference),
        )
        found = n1 + n2 + n3
        spent = (0, 0)
        if not self._tools_unsupported:
            graded, spent = await self._grade_structured(p, r, ref or None, criteria, found)
            if graded is not None:
                return graded
        graded = await self._grade_yes_no(p, r, ref or None, criteria, found)
        # A structured attempt that came back in prose still cost its tokens.
        return replace(
            graded,
            input_tokens=graded.input_tokens + spent[0],
            output_tokens=graded.output_tokens + spent[1],
        )

    async def _grade_structured(
        self, p: str, r: str, ref: str | None, criteria: list[Criterion], found: int
    ) -> tuple[GradeResult | None, tuple[int, int]]:
        structured = self._structured.get(tuple(criteria))
        if structured is None:
            try:
                structured = self._model.with_structured_output(
                    reply_model(criteria), method="function_calling", include_raw=True
                )
            except NotImplementedError:
                self._tools_unsupported = True
                return None, (0, 0)
            self._structured[tuple(criteria)] = structured
        messages = [SystemMessage(system_prompt()), HumanMessage(user_prompt(p, r, criteria, ref))]
        out = await self._call(structured, messages)
        raw, parsed = out.get("raw"), out.get("parsed")
        tokens = _usage(raw)
        try:
            verdicts = None if parsed is None else verdicts_from_reply(parsed, criteria)
        except DetectorError:
            verdicts = None
        if verdicts is None:
            # No usable tool call came back (none, or one that misses or misnames a
            # criterion): this record is graded in the Y/N format rather than lost. A model
            # that does so repeatedly answers in prose: the Y/N format from then on. One stray
            # reply from a model with tools does not cost a call per criterion for good.
            self._structured_misses += 1
            if self._structured_misses >= _MISSES_BEFORE_YES_NO:
                self._tools_unsupported = True
            return None, tokens
        self._structured_misses = 0
        return GradeResult(verdicts, *tokens, "structured", found), tokens

    async def _grade_yes_no(
        self, p: str, r: str, ref: str | None, criteria: list[Criterion], found: int
    ) -> GradeResult:
        verdicts, tokens_in, tokens_out = [], 0, 0
        for c in criteria:
            messages = [SystemMessage(system_prompt()), HumanMessage(yes_no_prompt(p, r, c, ref))]
            message: AIMessage = await self._call(self._model, messages)
            t_in, t_out = _usage(message)
            tokens_in, tokens_out = tokens_in + t_in, tokens_out + t_out
            try:
                answer, reasoning = parse_yes_no(str(message.content))
            except DetectorError as exc:
                raise JudgeError(f"criterion {c.name}: {exc}") from exc
            verdicts.append(verdict(c, answer, 1.0 if answer else 0.0, reasoning))
        return GradeResult(verdicts, tokens_in, tokens_out, "yes_no", found)


# Builds the judge's LangChain chat model from its config (blocking: run in a thread).
JudgeModelFactory = Callable[[JudgeConfig], Any]


def judge_model_from_config(cfg: JudgeConfig) -> Any:
    assert cfg.model is not None  # the config requires it when enabled
    api_key = cfg.api_key.get_secret_value() if cfg.api_key else None
    return chat_model(cfg.model, base_url=cfg.base_url, api_key=api_key, timeout_s=cfg.timeout_s)
