"""What bench/ingest.py's C publishers send: varied records (default) or one record repeated.

Varied: every record has its own prompt and response, made of CLINC150 utterances joined to a
length drawn between 80 and 600 characters (mean ~340, as the repeated record's 330), so the
messages keep the repeated payload's ~1.1 KB a record while the detectors' embedding cache
(4,096 texts) sees distinct texts, as it would from a real app, and the embedder does real work.
The messages are written once, one a line, to a file per publisher (each publisher its own
records, so parallel publishers never send the same one), and each publisher reads its file
with `mosquitto_pub -l` (one message per line), from the start again if asked for more.

Repeated (`--payload repeated`, the method before 2026-11-30 12:00): one record, or one batch,
published again and again with `mosquitto_pub --repeat`; every text after the first comes from
the embedding cache, so the embedder does almost nothing.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

from clinc import load

PayloadKind = Literal["varied", "repeated"]


@dataclass(frozen=True)
class Payload:
    """Files of messages: one per publisher, one message a line (varied), or one file holding
    a single message to repeat."""

    files: tuple[Path, ...]
    repeated: bool
    records_per_message: int


class TextMaker:
    """Prompts and responses of CLINC150 utterances, each of a length drawn per text."""

    def __init__(self, seed: int) -> None:
        self._texts = [u.text for u in load()]
        self._rng = random.Random(seed)

    def text(self, lead: str = "") -> str:
        target = self._rng.randint(80, 600)
        parts = [lead] if lead else []
        length = len(lead)
        while length < target:
            part = self._rng.choice(self._texts)
            parts.append(part)
            length += len(part) + 2
        return ". ".join(parts)

    def record(self, base: dict[str, Any]) -> dict[str, Any]:
        return {**base, "prompt": self.text(), "response": self.text("Sure, here you are")}


def write_payload(  # noqa: PLR0917
    workdir: Path,
    name: str,
    kind: PayloadKind,
    messages: int,
    per_message: int,
    publishers: int,
    record: Callable[[int], dict[str, Any]],
) -> Payload:
    """`messages` messages of `per_message` records (a JSON array when more than 1)."""
    if kind == "repeated":
        path = workdir / f"{name}.json"
        body = [record(j) for j in range(per_message)]
        path.write_text(json.dumps(body if per_message > 1 else body[0]))
        return Payload((path,), repeated=True, records_per_message=per_message)
    maker = TextMaker(seed=zlib.crc32(name.encode()))
    paths = tuple(workdir / f"{name}-{p}.jsonl" for p in range(publishers))
    files = [path.open("w", encoding="utf-8") for path in paths]
    try:
        for m in range(messages):
            body = [maker.record(record(m * per_message + j)) for j in range(per_message)]
            files[m % publishers].write(json.dumps(body if per_message > 1 else body[0]) + "\n")
    finally:
        for f in files:
            f.close()
    return Payload(paths, repeated=False, records_per_message=per_message)


def payload_bytes(payload: Payload) -> float:
    """Mean bytes of a record as published."""
    with payload.files[0].open("rb") as f:
        lines = [len(line) for _, line in zip(range(1000), f, strict=False)]
    return sum(lines) / len(lines) / payload.records_per_message


def publish(port: int, topic: str, payload: Payload, messages: int) -> None:
    """`messages` messages at QoS 1 from parallel publishers, each exiting once the broker
    holds all of its messages (so a subscriber drains a complete backlog, not a race)."""
    count = len(payload.files) if not payload.repeated else 4
    share = [messages // count + (i < messages % count) for i in range(count)]
    base = ["mosquitto_pub", "-p", str(port), "-t", topic, "-q", "1"]
    if payload.repeated:
        procs = [
            subprocess.Popen([*base, "-f", str(payload.files[0]), "--repeat", str(n)])
            for n in share
        ]
        feeders: list[threading.Thread] = []
    else:
        procs = [subprocess.Popen([*base, "-l"], stdin=subprocess.PIPE) for _ in share]
        feeders = [
            threading.Thread(target=_feed, args=(path, n, proc.stdin), daemon=True)
            for path, n, proc in zip(payload.files, share, procs, strict=True)
        ]
    for feeder in feeders:
        feeder.start()
    for feeder in feeders:
        feeder.join()
    for proc in procs:
        if proc.wait() != 0:
            raise RuntimeError("mosquitto_pub failed")


def _feed(path: Path, lines: int, sink: IO[bytes] | None) -> None:
    """`lines` lines of `path` into a publisher's stdin, from the start again when it ends."""
    assert sink is not None
    with path.open("rb") as f, sink:
        try:
            while lines > 0:
                before = lines
                for line in f:
                    sink.write(line)
                    lines -= 1
                    if not lines:
                        break
                if lines == before:
                    raise RuntimeError(f"{path} is empty")
                f.seek(0)
        except BrokenPipeError:
            pass  # the publisher died; its exit status says so
