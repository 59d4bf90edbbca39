"""The `lookout` command line (typer): the daemon, config check, replay and status; the other
subcommands live in modules of their own and are registered here."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from lookout import __version__
from lookout.errors import ConfigError, LookoutError
from lookout.monitor.cli.baseline import baseline_app
from lookout.monitor.cli.common import ConfigOpt, console, err, load_settings_or_exit
from lookout.monitor.cli.demo import demo
from lookout.monitor.cli.judge import judge_app
from lookout.monitor.cli.notify import notify_test
from lookout.monitor.cli.silence import silence_app
from lookout.monitor.cli.status import print_series, status
from lookout.monitor.config import load_settings, masked_dump

app = typer.Typer(
    name="lookout",
    help="Watch LLM applications in production.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        console.print(f"lookout {__version__}", highlight=False)
        raise typer.Exit


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Watch LLM applications in production."""


@app.command()
def run(
    config: ConfigOpt = None,
    embedded_broker: Annotated[
        bool, typer.Option("--embedded-broker", help="Start an in-process MQTT broker.")
    ] = False,
) -> None:
    """Run the daemon (until SIGTERM or Ctrl-C)."""
    from lookout.monitor.daemon import Daemon
    from lookout.monitor.logs import configure_logging

    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(exc.exit_code) from None
    if embedded_broker:
        settings = settings.model_copy(
            update={"bus": settings.bus.model_copy(update={"embedded": True})}
        )
    configure_logging(settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await Daemon(settings).run(stop)

    failed: list[BaseException] = []
    try:
        asyncio.run(main())
    except* (LookoutError, OSError) as group:
        failed.extend(_leaves(group))
    for failure in failed:
        err.print(f"[red]error:[/red] {failure}", highlight=False)
    if failed:
        # A bad config or database: a code systemd does not restart on (RestartPreventExitStatus).
        codes = [e.exit_code for e in failed if isinstance(e, LookoutError)]
        raise typer.Exit(max(codes, default=1))


def _leaves(exc: BaseException) -> list[BaseException]:
    """The errors inside (nested) exception groups: task groups wrap what passes through."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


@app.command("check-config")
def check_config(
    file: Annotated[Path, typer.Argument(help="The YAML file to check.")],
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Fail (exit 2) on a secret that is not set, too."),
    ] = False,
) -> None:
    """Validate a config file and print the effective config, secrets masked.

    A secret that is not at hand (`${VAR}` not set, a secret file missing) is a warning naming
    it, so CI can check a config without production secrets; `--strict` makes it an error.
    """
    unset: list[str] = []
    settings = load_settings_or_exit(file, unset=unset)
    console.print(yaml.safe_dump(masked_dump(settings), sort_keys=False), highlight=False)
    for problem in unset:
        label = "[red]error:[/red]" if strict else "[yellow]warning:[/yellow]"
        err.print(f"{label} {escape(problem)}", highlight=False, soft_wrap=True)
    if unset and strict:
        raise typer.Exit(2)
    not_set = f" ({len(unset)} secret{'s' if len(unset) > 1 else ''} not set)" if unset else ""
    err.print(f"[green]ok:[/green] {file} is valid{not_set}", highlight=False)


@app.command()
def replay(
    file: Annotated[Path, typer.Argument(help="JSONL: one record or array of records a line.")],
    config: ConfigOpt = None,
    topic: Annotated[
        str | None, typer.Option(help="Topic the lines are treated as arriving on.")
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Write sampled records to the configured store.")
    ] = False,
) -> None:
    """Process a file as if it came from the bus, then print a report."""
    from lookout.monitor.ingest.replay import run_replay

    if not file.is_file():
        err.print(f"[red]error:[/red] {file} is not a file")
        raise typer.Exit(2)
    settings = load_settings_or_exit(config)
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"replaying {file.name}", total=file.stat().st_size)
        report = asyncio.run(
            run_replay(
                settings,
                file,
                topic=topic,
                keep=keep,
                progress=lambda done: progress.update(task, completed=done),
            )
        )
    _print_report(report)
    if report.accepted == 0 and report.rejected_total:
        raise typer.Exit(1)


def _print_report(report: Any) -> None:
    summary = Table(title="replay", show_header=False)
    summary.add_row("lines", str(report.lines))
    summary.add_row("records accepted", str(report.accepted))
    summary.add_row("duplicates ignored", str(report.duplicates))
    summary.add_row("records rejected", str(report.rejected_total))
    for reason, count in sorted(report.rejected.items()):
        summary.add_row(f"  {reason}", str(count))
    rate = report.accepted / report.elapsed_s if report.elapsed_s else 0.0
    summary.add_row("processing rate", f"{rate:,.0f} records/s")
    console.print(summary)
    if report.series:
        print_series(console, report.series, "series over the file's time span")


# The subcommands from modules of their own, listed in --help after the ones above.
app.command()(status)
app.command("notify-test")(notify_test)
app.add_typer(silence_app, name="silence")
app.add_typer(baseline_app, name="baseline")
app.add_typer(judge_app, name="judge")
app.command()(demo)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
