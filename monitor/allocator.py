"""C allocator tuning for a long-running daemon.

glibc serves large allocations (128 KiB and up) with mmap and gives them back on free, but it
raises that threshold to the size of each such block freed, up to 32 MiB: after a few large
temporary buffers (a batch of MQTT payloads, a store flush's JSON blob, a reference fit's
arrays), blocks of that size come from the heap instead and stay in the process's RSS after
they are freed. Fixing the threshold keeps large frees going back to the OS (bench/ingest.py:
RSS growth from 100k to 1M records +1.8..+4.6 MB instead of +9.4..+10.9 MB). Hot-path code keeps
its temporaries under the threshold (see the static embedder), or each would be mapped anew.
"""

from __future__ import annotations

import ctypes
import os

M_MMAP_THRESHOLD = -3  # from glibc's <malloc.h>
DEFAULT_THRESHOLD_BYTES = 128 * 1024


def fix_mmap_threshold(threshold_bytes: int = DEFAULT_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (which also stops its dynamic raising). False where the C
    library has no `mallopt` (musl) or the operator chose a value with MALLOC_MMAP_THRESHOLD_."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold_bytes))
