"""Native thread pools bounded for a daemon that shares its box.

numpy's OpenBLAS starts one worker per core, and after each product its workers spin-wait for
the next one rather than sleep. The detectors run small matrix products every few tens of
milliseconds, so the workers never sleep: at 40 records/s the daemon burnt about half a core
(bench/quiet.py) on products that a second thread does not speed up (they are memory-bound, and
the ingest loop needs the other core). One BLAS and one OpenMP thread, set when the daemon
starts (threadpoolctl, for the libraries already loaded) and in the environment (for a library
loaded later and for the reference fitter's child processes). The static embedder's WordPiece
runs in `tokenizers`, whose batch encoding fans out to a thread per core: ~13% more CPU per
text than one thread (0.16 against 0.14 ms) for no gain beside a busy ingest loop, so
TOKENIZERS_PARALLELISM is false unless the operator set it. torch's threads are
`detectors.embedder.threads`; ONNX Runtime's are set on its session. An operator's own
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS (or the like) wins, as with the allocator's settings.
"""

from __future__ import annotations

import os

# The variables the BLAS and OpenMP runtimes read; an operator who set any of them chose.
_VARIABLES = (
    "OPENBLAS_NUM_THREADS",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
)


def limit_native_threads(threads: int = 1) -> bool:
    """Bound BLAS and OpenMP pools to `threads`; False (nothing changed) where the operator set
    one of their variables."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if any(name in os.environ for name in _VARIABLES):
        return False
    for name in _VARIABLES:
        os.environ[name] = str(threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)
    return True
