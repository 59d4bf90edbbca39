"""The detection thread: one worker thread that owns every track's detectors, so they need no
locks; the event loop hands it work and awaits the result, never the other way round."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class DetectionThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lookout-detect")

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on the detection thread, after the work queued before it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args, **kwargs))

    async def stop(self, timeout_s: float) -> None:
        """Let a batch still on the thread finish, within `timeout_s`; past it, the stop goes
        on without it (off the loop: the wait blocks)."""
        shutdown = functools.partial(self._executor.shutdown, wait=True, cancel_futures=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await asyncio.to_thread(shutdown)
