"""The judge's section (model, schedule, sampling, budget) and the redaction it applies."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from lookout.durations import DurationS
from lookout.monitor.config.base import Section

_OK_ONLY: list[Literal["ok", "error"]] = ["ok"]


class JudgeSchedule(Section):
    """Exactly one of `interval` (a duration) and `cron` (five crontab fields, local time)."""

    interval: DurationS | None = None
    cron: str | None = None

    @model_validator(mode="after")
    def _one(self) -> JudgeSchedule:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of `interval` and `cron`")
        if self.cron is not None:
            from apscheduler.triggers.cron import CronTrigger

            try:
                CronTrigger.from_crontab(self.cron)
            except ValueError as exc:
                raise ValueError(f"cron {self.cron!r}: {exc}") from exc
        return self


class JudgeConfig(Section):
    enabled: bool = False
    model: str | None = None  # init_chat_model spec, e.g. openai:gpt-4o-mini
    base_url: str | None = None  # an OpenAI-compatible server
    api_key: SecretStr | None = None
    schedule: JudgeSchedule = JudgeSchedule(interval=900.0)
    sample_size: int = Field(default=20, ge=1, le=10_000)  # per app and run
    criteria: list[str] = Field(default_factory=lambda: ["helpfulness", "harmfulness"])
    custom_criteria: dict[str, str] = Field(default_factory=dict)
    max_tokens_per_day: int = Field(default=200_000, ge=0)  # UTC days; input + output
    # Which stored records a run samples from.
    lookback: DurationS = 24 * 3600.0
    apps: list[str] = Field(default_factory=list)  # empty: every app
    models: list[str] = Field(default_factory=list)
    statuses: list[Literal["ok", "error"]] = Field(default_factory=_OK_ONLY.copy)
    ood_first: bool = False  # records flagged out-of-distribution before the rest
    feedback_first: bool = True  # records with negative user feedback before all the rest
    seed: str = "lookout"  # the deterministic sample's seed
    reference_key: str = "reference"  # a record's metadata key holding a reference answer
    # Records with a reference answer scored per run without a model (string and embedding
    # similarity); 0 turns it off.
    reference_scores_per_run: int = Field(default=2000, ge=0, le=100_000)
    # A shadow record's metadata key naming the production record it answers the same
    # request as; pairs graded per app and run (two calls each, both orders); 0 turns it off.
    shadow_key: str = "shadow_of"
    pairs_per_run: int = Field(default=20, ge=0, le=10_000)
    anchors: str | None = None  # JSONL of records with expected verdicts, re-judged each run
    max_concurrency: int = Field(default=4, ge=1, le=64)
    timeout_s: DurationS = 60.0
    attempts: int = Field(default=3, ge=1, le=10)
    max_chars: int = Field(default=4000, ge=100)  # per text sent, after redaction

    @model_validator(mode="after")
    def _usable(self) -> JudgeConfig:
        from lookout.detectors.errors import DetectorError
        from lookout.detectors.judge import criteria_from

        try:
            criteria_from(self.criteria, self.custom_criteria)
        except DetectorError as exc:
            raise ValueError(str(exc)) from exc
        if self.enabled and not self.model:
            raise ValueError("an enabled judge needs `model` (an init_chat_model spec)")
        return self


class RedactionConfig(Section):
    """PII redaction before text leaves the box (the judge's calls), beside the built-in kinds
    (emails, phone numbers, card numbers, IBANs, IP addresses, API keys, bearer tokens)."""

    patterns: dict[str, str] = Field(default_factory=dict)  # name: regular expression

    @field_validator("patterns")
    @classmethod
    def _compile(cls, patterns: dict[str, str]) -> dict[str, str]:
        for name, pattern in patterns.items():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r}: {exc}") from exc
        return patterns
