"""`lookout demo`: see lookout work in five minutes, with nothing else installed."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from lookout.monitor.cli.common import console


def demo(
    speed: Annotated[
        float,
        typer.Option("--speed", min=0.1, max=20.0, help="Run the timeline this many times faster."),
    ] = 1.0,
    once: Annotated[bool, typer.Option("--once", help="Stop when the timeline is over.")] = False,
    port: Annotated[int, typer.Option("--port", help="Dashboard/API port (busy: any).")] = 8321,
    state_dir: Annotated[
        Path | None, typer.Option("--state-dir", help="Keep the demo's store here.")
    ] = None,
) -> None:
    """Run the daemon with demo traffic for two apps and incidents that fire alerts."""
    from lookout.monitor.demo.runner import Demo, DemoOptions
    from lookout.monitor.logs import configure_logging

    configure_logging("error", json=False)  # the demo speaks for itself
    options = DemoOptions(speed=speed, once=once, api_port=port, state_dir=state_dir)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def say(line: str) -> None:
            console.print(line, highlight=False, soft_wrap=True)

        await Demo(options, out=say).run(stop)

    asyncio.run(main())
