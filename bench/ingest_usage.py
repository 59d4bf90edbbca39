"""Issue 18's ingest target through a broker: records with and without the usage fields.

The same method as bench/ingest.py (a private Mosquitto, a backlog drained by lookout in its own
process, CPU time per record), but the two sides are lookout on records as they were before
issue 18 and lookout on the same records carrying `user_id`, `session_id`, one tool call and a
retrieval (bench/ingest.py's `record`). Both payloads hold the same texts, so the embedder does
the same work. Rounds alternate the two (and which goes first), and each round gives a ratio:
the median of those ratios is the figure, since this box is shared and a neighbour's burst
spoils a round for whichever side runs in it.

    .venv/bin/python bench/ingest_usage.py                  # 5 rounds, QoS 0 and 1, both shapes
    .venv/bin/python bench/ingest_usage.py --rounds 3 --qos 1
    LOOKOUT_BENCH_DETECTORS='{"enabled": false}' .venv/bin/python bench/ingest_usage.py  # no model
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from ingest import BATCH, PUBLISHERS, Broker, record, run_one
from ingest_payloads import Payload, write_payload
from pipeline import record_without_usage


def payloads(work: Path, name: str, messages: int, per_message: int) -> tuple[Payload, Payload]:
    """(without, with) the usage fields; one name in two folders, so one seed and one set of
    texts for both."""
    sides = []
    for side, make in (("without", record_without_usage), ("with", record)):
        folder = work / side
        folder.mkdir(exist_ok=True)
        sides.append(write_payload(folder, name, "varied", messages, per_message, PUBLISHERS, make))
    return sides[0], sides[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--qos", type=int, choices=[0, 1], action="append")
    parser.add_argument("--singles", type=int, default=20_000)
    parser.add_argument("--batches", type=int, default=1_000, help="messages of 50 records")
    args = parser.parse_args()
    qos_levels = args.qos or [0, 1]
    with tempfile.TemporaryDirectory(prefix="lookout-bench-") as tmp:
        work = Path(tmp)
        shapes = (
            ("single records", payloads(work, "single", args.singles, 1), args.singles, 1),
            (
                f"batches of {BATCH}",
                payloads(work, "batch", args.batches, BATCH),
                args.batches,
                BATCH,
            ),
        )
        broker = Broker(work, stock_inflight=False)
        lines = []
        try:
            for label, (without, with_), messages, batch in shapes:
                for qos in qos_levels:
                    lines.append(
                        measure(broker, label, qos, without, with_, messages, batch, args.rounds)
                    )
        finally:
            broker.close()
    print(
        "\nCPU us per record of lookout, without / with the usage fields (median ratio of rounds)"
    )
    for line in lines:
        print(line)


def measure(  # noqa: PLR0917
    broker: Broker,
    label: str,
    qos: int,
    without: Payload,
    with_: Payload,
    messages: int,
    batch: int,
    rounds: int,
) -> str:
    pairs = []
    for r in range(rounds):
        order = [(0, without), (1, with_)]
        if r % 2:
            order.reverse()
        cpu = [0.0, 0.0]
        for side, payload in order:
            cpu[side] = run_one(broker, "lookout", qos, payload, messages, batch)[
                "cpu_us_per_record"
            ]
        pairs.append((cpu[0], cpu[1]))
        print(
            f"{label}, QoS {qos}, round {r + 1}: {cpu[0]:.2f} / {cpu[1]:.2f}"
            f" ({cpu[1] / cpu[0] - 1:+.1%})",
            flush=True,
        )
    ratios = [w / wo for wo, w in pairs]
    each = ", ".join(f"{x - 1:+.1%}" for x in ratios)
    return (
        f"{label:16s} QoS {qos}: median {statistics.median(p[0] for p in pairs):.2f} /"
        f" {statistics.median(p[1] for p in pairs):.2f} us, ratio median"
        f" {statistics.median(ratios) - 1:+.1%} (rounds {each})"
    )


if __name__ == "__main__":
    main()
