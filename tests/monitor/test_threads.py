"""The daemon bounds native thread pools at start unless the operator chose (monitor/threads.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_CHILD = """
import json, numpy
from threadpoolctl import threadpool_info
from lookout.monitor.threads import limit_native_threads
changed = limit_native_threads()
print(json.dumps({"changed": changed,
                  "blas": [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"],
                  "env": __import__("os").environ.get("OPENBLAS_NUM_THREADS"),
                  "tokenizers": __import__("os").environ.get("TOKENIZERS_PARALLELISM")}))
"""
_VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
)


def _run(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if k not in _VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD],
        env={**clean, **env},
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return dict(json.loads(out.strip().splitlines()[-1]))


def test_blas_is_bounded_to_one_thread_after_numpy_is_loaded() -> None:
    got = _run()
    assert got["changed"] is True
    assert got["blas"] and all(n == 1 for n in got["blas"])  # type: ignore[attr-defined]
    assert got["env"] == "1"  # for the reference fitter's spawned children
    assert got["tokenizers"] == "false"  # WordPiece on the detection thread alone


def test_the_operators_setting_wins() -> None:
    got = _run(OPENBLAS_NUM_THREADS="2", TOKENIZERS_PARALLELISM="true")
    assert got["changed"] is False
    assert got["env"] == "2"
    assert got["tokenizers"] == "true"
