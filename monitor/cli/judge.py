"""`lookout judge run-now|runs`: LLM-judge spot checks outside the schedule, and their record.

`run-now` leaves a request in the judge store; a running daemon with the same config takes it
within one eval_interval and runs it after any run under way (in a cluster: the node that holds
the judge role, through the shared PostgreSQL store).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from lookout.monitor.cli.common import (
    ConfigOpt,
    console,
    err,
    load_settings_or_exit,
    utc_time,
)

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from lookout.monitor.config import Settings
    from lookout.monitor.judge.store import JudgeStore, RunInfo

judge_app = typer.Typer(help="LLM-judge spot checks.")


def _open_store(settings: Settings) -> AbstractAsyncContextManager[JudgeStore]:
    from lookout.monitor.judge.backends import command_store

    return command_store(settings)


def _table(runs: list[RunInfo]) -> Table:
    table = Table(
        "run",
        "started (UTC)",
        "trigger",
        "app",
        "outcome",
        "judged",
        "failed",
        "skipped",
        "tokens",
        "cost",
        "agreement",
        "detail",
    )
    for r in runs:
        table.add_row(
            str(r.id),
            utc_time(r.started_at),
            r.trigger,
            r.app or "all",
            r.outcome,
            str(r.judged),
            str(r.failed),
            str(r.skipped),
            str(r.input_tokens + r.output_tokens),
            f"{r.cost:.4f}",
            "-" if r.agreement is None else f"{r.agreement:.2f}",
            r.detail,
        )
    return table


async def _request(
    settings: Settings, app: str | None, wait: bool, timeout_s: float
) -> RunInfo | None:
    async with _open_store(settings) as judge_store:
        request_id = await judge_store.request_run(time.time(), app)
        console.print(
            f"judge run requested (request {request_id}); a running daemon takes it "
            f"within {settings.eval_interval:g} s"
        )
        if not wait:
            return None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            taken_at, run_id = await judge_store.request_state(request_id)
            if run_id is not None:
                run = await judge_store.run(run_id)
                if run is not None and run.outcome != "running":
                    return run
            await asyncio.sleep(0.5 if taken_at is not None else 1.0)
        err.print(
            f"[yellow]no finished run after {timeout_s:g} s[/yellow]: is a daemon running "
            "with this config and judge.enabled?"
        )
        raise typer.Exit(1)


@judge_app.command("run-now")
def run_now(
    config: ConfigOpt = None,
    app: Annotated[str | None, typer.Option("--app", help="Only this app's records.")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Wait for the run and show it.")] = False,
    timeout_s: Annotated[float, typer.Option("--timeout", help="Seconds --wait waits.")] = 600,
) -> None:
    """Ask the running daemon for a judge run now."""
    settings = load_settings_or_exit(config)
    if not settings.judge.enabled:
        err.print("[red]error:[/red] judge.enabled is false in this config")
        raise typer.Exit(2)
    run = asyncio.run(_request(settings, app, wait, timeout_s))
    if run is not None:
        console.print(_table([run]))
        if run.outcome not in {"done"}:
            raise typer.Exit(1)


@judge_app.command("runs")
def runs(
    config: ConfigOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many, newest first.")] = 20,
) -> None:
    """Recent judge runs: outcome, records, tokens, cost, anchor agreement."""
    settings = load_settings_or_exit(config)

    async def work() -> list[RunInfo]:
        async with _open_store(settings) as judge_store:
            return await judge_store.runs(limit=limit)

    found = asyncio.run(work())
    console.print(_table(found) if found else "no judge runs yet")
