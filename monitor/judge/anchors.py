"""Anchor records for the judge-drift check: fixed records with expected verdicts, re-judged
on every run. When the product is unchanged but anchors stop agreeing, the judge changed."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lookout.errors import ConfigError


class Anchor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: str
    response: str = Field(min_length=1)
    reference: str | None = None
    expected: dict[str, bool] = Field(min_length=1)  # criterion: passes


def load_anchors(path: str | Path, criteria: set[str]) -> list[Anchor]:
    """Anchors from a JSONL file; an invalid line or an unjudged criterion names its line."""
    file = Path(path)
    try:
        lines = file.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"judge.anchors: cannot read {file}: {exc.strerror}") from exc
    anchors = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            anchor = Anchor.model_validate_json(line)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise ConfigError(f"judge.anchors {file}:{number}: {where}: {first['msg']}") from exc
        unknown = set(anchor.expected) - criteria
        if unknown:
            raise ConfigError(
                f"judge.anchors {file}:{number}: expected verdicts for criteria "
                f"the judge does not use: {', '.join(sorted(unknown))}"
            )
        anchors.append(anchor)
    if not anchors:
        raise ConfigError(f"judge.anchors {file}: no anchor records")
    return anchors


def agreement(expected: dict[str, bool], passed: dict[str, bool]) -> tuple[int, int]:
    """(agreeing, compared) over the criteria both name."""
    compared = [c for c in expected if c in passed]
    return sum(expected[c] == passed[c] for c in compared), len(compared)
