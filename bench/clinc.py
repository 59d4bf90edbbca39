"""CLINC150 from tests/data for the detector benchmarks (no download at run time)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

CLINC = Path(
    os.environ.get(
        "LOOKOUT_CLINC150",
        Path(__file__).resolve().parents[1] / "tests" / "data" / "clinc150" / "clinc150.jsonl",
    )
)


@dataclass(frozen=True)
class Utterance:
    text: str
    intent: str
    domain: str
    split: str
    is_oos: bool


def load(path: Path = CLINC) -> list[Utterance]:
    with path.open(encoding="utf-8") as f:
        return [Utterance(**json.loads(line)) for line in f if line.strip()]
