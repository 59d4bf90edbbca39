"""The `lookout` command line (typer): the daemon, config check, replay and status; the other
subcommands live in modules of their own and are registered here."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from lookout.errors import ConfigError, LookoutError
from lookout.monitor.cli.baseline import baseline_app
from lookout.monitor.cli.common import ConfigOpt, console, err, load_settings_or_exit
from lookout.monitor.cli.demo import demo
from lookout.monitor.cli.judge import judge_app
from lookout.monitor.cli.notify import notify_test
from lookout.monitor.cli.silence import silence_app
from lookout.monitor.config import load_settings, masked_dump

app = typer.Typer(
    name="lookout",
    help="Watch LLM applications in production.",
    no_args_is_help=True,
    add_completion=False,
)


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
) -> None:
    """Validate a config file and print the effective config, secrets masked."""
    settings = load_settings_or_exit(file)
    console.print(yaml.safe_dump(masked_dump(settings), sort_keys=False), highlight=False)
    err.print(f"[green]ok:[/green] {file} is valid")


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


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


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
        console.print(_series_table(report.series, "series over the file's time span"))


def _series_table(series: list[Any], title: str) -> Table:
    table = Table(title=title)
    for col in (
        "app",
        "model",
        "count",
        "qps",
        "err %",
        "p50 s",
        "p95 s",
        "p99 s",
        "ttft p95",
        "tok/s",
        "gen tok/s p50",
        "tok/req",
        "cost/h",
    ):
        table.add_column(col, justify="left" if col in ("app", "model") else "right")

    def get(s: Any, name: str) -> Any:
        return s[name] if isinstance(s, dict) else getattr(s, name)

    for s in sorted(series, key=lambda s: (get(s, "app") == "*", get(s, "app"), get(s, "model"))):
        er = get(s, "error_rate")
        table.add_row(
            get(s, "app"),
            get(s, "model"),
            str(get(s, "count")),
            _fmt(get(s, "qps")),
            _fmt(er * 100 if er is not None else None, 1),
            _fmt(get(s, "latency_p50")),
            _fmt(get(s, "latency_p95")),
            _fmt(get(s, "latency_p99")),
            _fmt(get(s, "ttft_p95")),
            _fmt(get(s, "tps"), 1),
            _fmt(get(s, "gen_tps_p50"), 1),
            _fmt(get(s, "tokens_per_request"), 1),
            _fmt(get(s, "cost_per_hour"), 4),
        )
    return table


@app.command()
def status(config: ConfigOpt = None) -> None:
    """Show a running daemon's current series, drift and OOD, and the judge's last run."""
    settings = load_settings_or_exit(config)
    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host  # noqa: S104
    url = f"http://{host}:{settings.api.port}/api/v1/status"
    headers = {}
    if settings.api.token is not None:
        headers["Authorization"] = f"Bearer {settings.api.token.get_secret_value()}"
    try:
        response = httpx.get(url, headers=headers, timeout=5.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] no daemon answering at {url}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    body = response.json()
    bus = "connected" if body["bus"]["connected"] else "[red]not connected[/red]"
    console.print(f"lookout {body['version']}: bus {bus}, queue {body['ingest']['queue_depth']}")
    window = f"last {body['window_s']:.0f} s"
    console.print(_series_table(body["series"], window) if body["series"] else "no records yet")
    if body.get("detectors"):
        console.print(_detector_table(body["detectors"]))
    if body.get("anomalies"):
        console.print(_anomaly_table(body["anomalies"]))
    judge = body.get("judge")
    if judge and judge.get("last_run"):
        run = judge["last_run"]
        rates = [
            f"{p['app']} {p['value']:.0%} of {p['count']}"
            for p in judge.get("series", [])
            if p["metric"] == "judge_pass_rate" and p["value"] is not None
        ]
        console.print(
            f"judge: last run {run['outcome']} ({run['judged']} judged, "
            f"{run['failed']} failed, {run['skipped']} skipped); pass rate: "
            f"{', '.join(rates) or 'no verdicts in the window'}"
        )


def _detector_table(detectors: list[dict[str, Any]]) -> Table:
    table = Table(title="drift and out-of-distribution")
    for col in ("app", "field", "reference", "drift score", "drifted", "ood rate"):
        table.add_column(col, justify="left" if col in ("app", "field") else "right")
    for d in detectors:
        score, rate = d.get("drift_score"), d.get("ood_rate")
        table.add_row(
            d["app"],
            d["field"],
            str(d["reference_id"]) if d.get("reference_id") is not None else "building",
            "-" if score is None else f"{score:.2f}",
            "[red]yes[/red]" if d.get("drifted") else "no",
            "-" if rate is None else f"{rate:.1%}",
        )
    return table


def _anomaly_table(anomalies: list[dict[str, Any]]) -> Table:
    table = Table(title="anomaly rules")
    for col in ("rule", "app", "value", "usual band", "robust z", "against"):
        table.add_column(col, justify="left" if col in ("rule", "app", "against") else "right")
    for a in anomalies:
        learning = a["baseline"] == "learning"
        band = "-" if learning else f"{a['low']:.3g}-{a['high']:.3g}"
        z = "-" if a["z"] is None else f"{a['z']:+.1f}"
        table.add_row(
            a["rule"],
            a["labels"].get("app", ""),
            f"{a['value']:.3g}",
            band,
            f"[red]{z}[/red]" if a["anomalous"] else z,
            f"learning ({a['history_points']} min)" if learning else a["baseline"],
        )
    return table


# The subcommands from modules of their own, listed in --help after the ones above.
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
