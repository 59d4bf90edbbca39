"""Where issue 18's usage fields cost CPU on the ingest path, part by part, in one process.

The records of bench/ingest.py in batches of 50, with and without `user_id`, `session_id`,
one tool call and a retrieval: decoding each message (`decode_payload`: parse, validate,
normalise, free; and msgspec's part alone: the fields' bytes parsed and skipped, or decoded
into the wire format's typed structs), then engagement's and tool use's `observe_many` over
the decoded batches, as `Pipeline` calls them. Best of `--rounds` of 100,000 records each,
process CPU time per record; the parts add up to most of what `bench/pipeline.py --ab`
measures end to end (the rest: the pipeline's truth tests and runs, and the sampled rows'
larger JSON in the store).

    .venv/bin/python bench/usage_parts.py
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import msgspec
from ingest import BATCH, TOPIC
from pipeline import USAGE_FIELDS, payloads

from lookout.monitor.ingest.records import DecodeLimits, Record, WireRecord, decode_payload
from lookout.monitor.metrics.engagement import EngagementWindows
from lookout.monitor.metrics.tools import ToolWindows

RECORDS = 100_000


def skipping_decoder() -> msgspec.json.Decoder[Any]:
    """The wire struct without the usage fields: msgspec parses their bytes and skips them."""
    kept = [
        (f.name, f.type, msgspec.field(default=f.default, name=f.encode_name))
        for f in msgspec.structs.fields(WireRecord)
        if f.name not in USAGE_FIELDS
    ]
    skipping = msgspec.defstruct("Skipping", kept, frozen=True, gc=False)
    return msgspec.json.Decoder(list[skipping])  # type: ignore[valid-type]


def cpu_ns_per_record(work: Callable[[], None], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        work()
        best = min(best, time.process_time() - started)
    return best / RECORDS * 1e9


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    limits = DecodeLimits()
    with_fields, without = payloads(RECORDS, BATCH), payloads(RECORDS, BATCH, usage=False)

    def decoding(messages: list[bytes]) -> Callable[[], None]:
        def work() -> None:
            for message in messages:
                decode_payload(message, TOPIC, 0.0, limits)

        return work

    def parsing(decoder: msgspec.json.Decoder[Any], messages: list[bytes]) -> Callable[[], None]:
        def work() -> None:
            for message in messages:
                decoder.decode(message)

        return work

    batches: list[list[Record]] = [
        decode_payload(m, TOPIC, 0.0, limits).records for m in with_fields
    ]

    def engagement() -> None:
        windows = EngagementWindows()
        for i, batch in enumerate(batches):
            windows.observe_many("bench", batch, 1000.0 + i * 0.001)

    def tool_use() -> None:
        windows = ToolWindows(lambda window_s, now: {})
        for i, batch in enumerate(batches):
            windows.observe_many("bench", batch, 1000.0 + i * 0.001)

    bare = cpu_ns_per_record(decoding(without), args.rounds)
    filled = cpu_ns_per_record(decoding(with_fields), args.rounds)
    print(f"decode, without the fields       {bare:6.0f} ns a record")
    print(f"decode, with them                {filled:6.0f} ns a record ({filled - bare:+.0f})")
    typed = msgspec.json.Decoder(list[WireRecord])
    plain = cpu_ns_per_record(parsing(typed, without), args.rounds)
    skipped = cpu_ns_per_record(parsing(skipping_decoder(), with_fields), args.rounds)
    decoded = cpu_ns_per_record(parsing(typed, with_fields), args.rounds)
    print(f"  msgspec alone, without them    {plain:6.0f} ns")
    print(f"  their bytes parsed and skipped {skipped:6.0f} ns ({skipped - plain:+.0f})")
    print(f"  decoded into typed structs     {decoded:6.0f} ns ({decoded - plain:+.0f})")
    print(f"engagement.observe_many          {cpu_ns_per_record(engagement, args.rounds):6.0f} ns")
    print(f"tool_use.observe_many            {cpu_ns_per_record(tool_use, args.rounds):6.0f} ns")


if __name__ == "__main__":
    main()
