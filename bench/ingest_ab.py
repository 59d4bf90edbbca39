"""Several checkouts of lookout draining the same backlog on one broker, alternating.

For before/after figures measured in one run: each checkout's own `bench/ingest.py --role
lookout` subscriber (its own code and venv) drains N messages of the repeated record at QoS 1
from one private Mosquitto, round after round, checkouts in turn. Prints each round and, per
checkout, the median CPU per record and the best rate.

    git worktree add ../lookout-before <commit>   # then a venv there (make, or a copy)
    .venv/bin/python bench/ingest_ab.py ../lookout-before . --batch 50 --messages 4000
    .venv/bin/python bench/ingest_ab.py ../lookout-before . --batch 1 --messages 20000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from ingest import Broker, record  # this checkout's broker and record
from ingest_payloads import Payload


def bench_module(checkout: Path, n: int) -> ModuleType:
    """That checkout's bench/ingest.py, whose run_one starts its own subscriber."""
    spec = importlib.util.spec_from_file_location(f"ingest_{n}", checkout / "bench" / "ingest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(checkout / "bench"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("checkouts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--qos", type=int, default=1)
    args = parser.parse_args()
    checkouts = [c.resolve() for c in args.checkouts]
    modules = [bench_module(c, n) for n, c in enumerate(checkouts)]
    results: dict[Path, list[dict[str, Any]]] = {c: [] for c in checkouts}
    with tempfile.TemporaryDirectory(prefix="lookout-bench-") as tmp:
        work = Path(tmp)
        path = work / "payload.json"
        body = [record(j) for j in range(args.batch)]
        path.write_text(json.dumps(body if args.batch > 1 else body[0]))
        payload = Payload((path,), repeated=True, records_per_message=args.batch)
        broker = Broker(work)
        try:
            for _ in range(args.rounds):
                for checkout, module in zip(checkouts, modules, strict=True):
                    # run_one starts `sys.executable` (one for all modules): that checkout's venv.
                    sys.executable = str(checkout / ".venv" / "bin" / "python")
                    # An older checkout's run_one hands the payload to this broker untouched.
                    out = module.run_one(
                        broker, "lookout", args.qos, payload, args.messages, args.batch
                    )
                    results[checkout].append(out)
                    print(
                        f"{checkout.name}: {out['records_per_s']:,.0f} records/s, "
                        f"{out['cpu_us_per_record']:.2f} us CPU/record",
                        flush=True,
                    )
        finally:
            broker.close()
    for checkout in checkouts:
        rounds = results[checkout]
        cpu_us = statistics.median(r["cpu_us_per_record"] for r in rounds)
        print(
            f"{checkout.name}: median {cpu_us:.2f} us CPU/record, "
            f"best {max(r['records_per_s'] for r in rounds):,.0f} records/s, "
            f"rounds {[round(r['records_per_s']) for r in rounds]}"
        )


if __name__ == "__main__":
    main()
