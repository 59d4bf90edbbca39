"""Reference fitting in a child process.

Calibration bootstraps thousands of streams (seconds of CPU, tens of MB at its peak). Run in
the daemon, the allocator kept that peak for good (bench/ingest.py: +25-33 MB of RSS from
100k to 1M records, +4.5 MB with the detectors off) and its Python loops competed with ingest
for the GIL. A fresh process per fit gives the memory back when it exits and takes the work
off the daemon's interpreter; the fitted states come back as plain arrays.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TYPE_CHECKING

from lookout.detectors.errors import DetectorError
from lookout.detectors.reference import FittedReference, fit_reference

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

    from lookout.detectors.reference import DetectorParams, States


def _fit_states(embeddings: NDArray[np.float32], params: DetectorParams) -> States:
    return fit_reference(embeddings, params).states()


def fit_isolated(
    embeddings: NDArray[np.float32], params: DetectorParams, timeout_s: float = 900.0
) -> FittedReference:
    """`fit_reference` in a child process (blocking: call it off the event loop)."""
    # spawn, not fork: forking a process that runs threads can copy a held lock.
    context = multiprocessing.get_context("spawn")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            states = pool.submit(_fit_states, embeddings, params).result(timeout=timeout_s)
    except (BrokenProcessPool, TimeoutError, OSError) as exc:
        raise DetectorError(f"reference fitting failed in its process: {exc!r}") from exc
    return FittedReference.from_states(states)
