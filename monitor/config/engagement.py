"""The `engagement:` section: distinct users and sessions per app, and how sessions go."""

from __future__ import annotations

from pydantic import Field

from lookout.durations import DurationS
from lookout.monitor.config.base import Section


class EngagementConfig(Section):
    enabled: bool = True  # records without user_id or session_id cost nothing either way
    bucket: DurationS = 60.0  # one HyperLogLog sketch per app, kind and bucket
    # Sketch size: 2^lg_k one-byte registers; relative error about 1.04 / sqrt(2^lg_k).
    lg_k: int = Field(default=11, ge=4, le=16)
    session_idle_gap: DurationS = 1800.0  # a session ends after this long without a request
    max_open_sessions: int = Field(default=100_000, ge=1)
