"""Reference fitting in child processes, one at a time, beside the detection thread.

Calibration bootstraps thousands of streams (seconds of CPU, tens of MB at its peak). Run in
the daemon, the allocator kept that peak for good and its Python loops competed with ingest for
the GIL; run on the detection thread, it also stopped every other app's detection while the
queue filled (bench/ingest.py: RSS +25-33 MB from 100k to 1M records, +4.5 MB with the
detectors off). A fresh process per fit gives its memory back when it exits; the fitted states
come back as plain arrays; stopping the daemon kills a fit under way.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from lookout.detectors.errors import DetectorError
from lookout.detectors.reference import FittedReference, fit_reference

if TYPE_CHECKING:
    from multiprocessing.connection import Connection
    from multiprocessing.process import BaseProcess

    import numpy as np
    from numpy.typing import NDArray

    from lookout.detectors.reference import DetectorParams


def _child(conn: Connection, embeddings: NDArray[np.float32], params: DetectorParams) -> None:
    try:
        conn.send((True, fit_reference(embeddings, params).states()))
    except Exception as exc:  # reported to the parent, which decides
        conn.send((False, f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class ReferenceFitter:
    def __init__(self, timeout_s: float = 900.0) -> None:
        # spawn, not fork: forking a process that runs threads can copy a held lock.
        self._context: Any = multiprocessing.get_context("spawn")
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookout-fit")
        self._timeout_s = timeout_s
        self._lock = threading.Lock()
        self._current: BaseProcess | None = None
        self._closed = False

    def submit(
        self, embeddings: NDArray[np.float32], params: DetectorParams
    ) -> Future[FittedReference]:
        return self._thread.submit(self.fit, embeddings, params)

    def fit(self, embeddings: NDArray[np.float32], params: DetectorParams) -> FittedReference:
        """`fit_reference` in a child process (blocking)."""
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child, args=(send, embeddings, params), name="lookout-fit", daemon=True
        )
        with self._lock:
            if self._closed:
                raise DetectorError("the daemon is stopping")
        # Outside the lock: a spawned child imports before it reads its arguments, which
        # can take a second, and close() must not wait for that to kill it.
        process.start()
        with self._lock:
            self._current = process
            stopping = self._closed
        send.close()
        if stopping:
            process.kill()
        try:
            if not receive.poll(self._timeout_s):
                raise DetectorError(f"reference fitting took over {self._timeout_s:g} s")
            ok, payload = receive.recv()
        except (EOFError, OSError) as exc:
            raise DetectorError(
                f"the fitting process ended early (exit code {process.exitcode})"
            ) from exc
        finally:
            receive.close()
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join()
            with self._lock:
                self._current = None
        if not ok:
            raise DetectorError(f"reference fitting failed: {payload}")
        return FittedReference.from_states(payload)

    @property
    def busy(self) -> bool:
        """A fitting process is running."""
        with self._lock:
            return self._current is not None and self._current.is_alive()

    def close(self) -> None:
        """Kill a fit under way and wait for its thread (blocking, brief)."""
        with self._lock:
            self._closed = True
            if self._current is not None and self._current.is_alive():
                self._current.kill()
        self._thread.shutdown(wait=True, cancel_futures=True)
