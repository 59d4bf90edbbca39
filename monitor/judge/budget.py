"""The judge's daily token budget: each call's tokens are estimated and reserved before it is
made, so calls in flight together cannot overrun the cap by more than their estimates' error."""

from __future__ import annotations


def estimate_tokens(texts: list[str | None], criteria: int, per_criterion_calls: bool) -> int:
    """A generous guess at a record's tokens, reserved against the cap before the call."""
    chars = sum(len(t or "") for t in texts) + 400 + 80 * criteria
    calls = criteria if per_criterion_calls else 1
    return (chars // 3 + 1) * calls + 200 * criteria


class TokenBudget:
    """The day's tokens: used, and reserved by calls in flight."""

    def __init__(self, cap: int, used: int) -> None:
        self.cap, self.used, self.reserved = cap, used, 0

    def reserve(self, tokens: int) -> bool:
        if self.used + self.reserved + tokens > self.cap:
            return False
        self.reserved += tokens
        return True

    def settle(self, reserved: int, used: int) -> None:
        self.reserved -= reserved
        self.used += used
