"""The `feedback:` section: how users' feedback on records is read into series."""

from __future__ import annotations

from pydantic import Field

from lookout.monitor.config.base import Section


class FeedbackConfig(Section):
    # A feedback event is negative when its score is at or below its key's value here, else
    # at or below `default_negative_at` (thumbs sent as 1/0 or 1/-1 need nothing set).
    negative_at: dict[str, float] = Field(default_factory=dict)
    default_negative_at: float = 0.0
    max_keys: int = Field(default=20, ge=1)  # keys past it are counted under `other`
    max_comment_chars: int = Field(default=4_000, ge=0)
    dedupe: int = Field(default=100_000, ge=0)  # (app, record, key, user) kept to spot repeats

    def negative(self, key: str, score: float) -> bool:
        return score <= self.negative_at.get(key, self.default_negative_at)
