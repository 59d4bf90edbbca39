"""Silences: mute notifications (not state) of matching alerts until they end."""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

from lookout.durations import parse_duration_s


@dataclass(frozen=True, slots=True)
class Silence:
    """Mutes notifications (not state) of alerts whose rule and labels match, until `ends_at`."""

    id: str
    rule: str | None  # None: any rule
    matchers: dict[str, str]
    starts_at: float
    ends_at: float
    comment: str = ""

    def mutes(self, rule: str, labels: dict[str, str], now: float) -> bool:
        if not self.starts_at <= now < self.ends_at:
            return False
        if self.rule is not None and self.rule != rule:
            return False
        return all(labels.get(k) == v for k, v in self.matchers.items())


DEFAULT_SILENCE_MAX_S = 90 * 86400.0  # `silences.max_duration`


def silence_from_request(
    body: object, now: float, max_duration_s: float = DEFAULT_SILENCE_MAX_S
) -> Silence:
    """A silence from `{"rule"?, "matchers"?, "duration"? | "ends_at"?, "comment"?}`, ending
    after `now` and at most `max_duration_s` after it."""
    if not isinstance(body, dict):
        raise ValueError("a silence is a JSON object")
    rule = body.get("rule")
    matchers = body.get("matchers", {})
    if rule is not None and not isinstance(rule, str):
        raise ValueError("rule must be a string")
    if not isinstance(matchers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in matchers.items()
    ):
        raise ValueError("matchers must map label names to values")
    if rule is None and not matchers:
        raise ValueError("a silence needs a rule, matchers, or both")
    ends_at = _silence_end(body, now)
    if ends_at <= now:
        raise ValueError("the silence would end before it starts")
    if ends_at - now > max_duration_s:
        raise ValueError(
            f"a silence lasts at most {_days(max_duration_s)} (silences.max_duration);"
            " add a new one when it ends"
        )
    comment = str(body.get("comment", ""))[:500]
    return Silence(uuid.uuid4().hex[:12], rule, matchers, now, ends_at, comment)


def _silence_end(body: dict[str, Any], now: float) -> float:
    """`ends_at` (epoch seconds) or now + `duration`; a finite number either way."""
    if "ends_at" in body:
        ends_at = body["ends_at"]
        # A number, not a string: float("inf") and float("nan") would pass a string through.
        if isinstance(ends_at, bool) or not isinstance(ends_at, int | float):
            raise ValueError("ends_at must be a number of seconds since the epoch")
        ends_at = float(ends_at)
    else:
        ends_at = now + parse_duration_s(body.get("duration", "1h"))
    if not math.isfinite(ends_at):
        raise ValueError("the silence needs a finite end: ends_at or duration")
    return ends_at


def _days(seconds: float) -> str:
    return f"{seconds / 86400:g} days" if seconds >= 86400 else f"{seconds:g} s"


def silence_from_row(row: tuple[Any, ...]) -> Silence:
    """A stored silence: (id, rule, matchers as JSON, starts_at, ends_at, comment)."""
    return Silence(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5])


def silence_to_row(silence: Silence) -> tuple[Any, ...]:
    return (
        silence.id,
        silence.rule,
        json.dumps(silence.matchers),
        silence.starts_at,
        silence.ends_at,
        silence.comment,
    )
