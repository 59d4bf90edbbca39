"""Durations as people write them in config, the CLI and the API: `10s`, `5m`, `7d`."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration_s(value: object) -> float:
    """`10s`, `5m`, `7d`, `250ms` or a bare number of seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string such as 10s, 5m, 7d")
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]
    raise ValueError(f"invalid duration {value!r}: use e.g. 10s, 5m, 2h, 7d")


# A positive duration in a config model: seconds, or a string such as `5m`.
DurationS = Annotated[float, BeforeValidator(parse_duration_s), Field(gt=0)]
# A duration that may be zero, where 0 means "not at all" (a rule's `for: 0s`, as in Prometheus).
DurationOrZeroS = Annotated[float, BeforeValidator(parse_duration_s), Field(ge=0)]
