"""Capped exponential backoff with jitter, for everything lookout retries."""

from __future__ import annotations

import random


def backoff_s(
    attempt: int,
    rng: random.Random,
    *,
    base_s: float,
    cap_s: float,
    retry_after_s: float | None = None,
) -> float:
    """Seconds before try `attempt + 1`: base * 2^attempt, capped, then jittered down to half
    (so many clients do not retry in step), and never sooner than a Retry-After (max 1 h)."""
    delay = min(cap_s, base_s * 2.0 ** min(attempt, 30)) * (0.5 + rng.random() / 2)
    if retry_after_s is not None:
        return max(delay, min(retry_after_s, 3600.0))
    return delay
