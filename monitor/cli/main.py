"""The `lookout` command line (typer)."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn
from rich.table import Table

from lookout.errors import LookoutError
from lookout.monitor.config import Settings, load_settings, masked_dump

app = typer.Typer(
    name="lookout",
    help="Watch LLM applications in production.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="LOOKOUT_CONFIG", help="YAML config file."),
]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        settings = load_settings(config)
    except LookoutError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if overrides:
        settings = settings.model_copy(update=overrides)
    return settings


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

    settings = _settings(config)
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
    for exc in failed:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
    if failed:
        raise typer.Exit(1)


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
    settings = _settings(file)
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
    settings = _settings(config)
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


@app.command("notify-test")
def notify_test(
    channel: Annotated[str, typer.Argument(help="A channel name from the config.")],
    config: ConfigOpt = None,
) -> None:
    """Send a test notification to CHANNEL and print the receiver's answer."""
    settings = _settings(config)
    spec = settings.channels.get(channel)
    if spec is None:
        known = ", ".join(sorted(settings.channels)) or "none configured"
        err.print(f"[red]error:[/red] no channel {channel!r} (known: {known})", highlight=False)
        raise typer.Exit(2)
    outcome = asyncio.run(_send_test(spec, channel, settings.api.external_url or ""))
    if outcome.delivered:
        console.print(f"delivered to {channel}: {outcome.detail}", highlight=False)
        return
    err.print(f"[red]not delivered[/red] to {channel}: {outcome.detail or 'no answer'}")
    raise typer.Exit(1)


async def _send_test(spec: Any, channel: str, external_url: str) -> Any:
    import time

    from lookout.alerts.notifiers import build_notifier
    from lookout.alerts.payload import NotifiedAlert, alertmanager_payload
    from lookout.alerts.state import Alert, Timing, step
    from lookout.clock import SystemClock

    now = time.time()
    alert = Alert(rule="lookout-test", labels=(("app", "lookout"),))
    _, note = step(alert, True, 1.0, now, timing=Timing())
    assert note is not None
    item = NotifiedAlert(
        note,
        severity="info",
        summary="lookout test notification",
        description="Sent by `lookout notify-test`; nothing is wrong.",
    )
    payload = alertmanager_payload([item], receiver=channel, external_url=external_url)
    async with (
        httpx.AsyncClient() as client,
        build_notifier(channel, spec, http=client, clock=SystemClock()) as notifier,
    ):
        return await notifier.send(payload, note.idempotency_key, now)


silence_app = typer.Typer(help="Mute notifications (not alert state) for a while.")
app.add_typer(silence_app, name="silence")


def _sqlite_file(settings: Settings, what: str) -> Path:
    """The SQLite database beside the store, where `what` lives; exit 2 on another store."""
    from lookout.monitor.storage import sqlite_path

    if not settings.store.url.startswith("sqlite:///"):
        err.print(f"[red]error:[/red] {what} live in the SQLite store in this release")
        raise typer.Exit(2)
    return sqlite_path(settings.store.url)


def _silence_book(settings: Settings) -> Any:
    from lookout.alerts.outbox import SqliteOutbox

    return SqliteOutbox(_sqlite_file(settings, "silences"))


@silence_app.command("add")
def silence_add(
    rule: Annotated[str | None, typer.Option(help="Only this rule's alerts.")] = None,
    match: Annotated[
        list[str] | None, typer.Option("--match", "-m", help="LABEL=VALUE, repeatable.")
    ] = None,
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 2h.")] = "1h",
    comment: Annotated[str, typer.Option(help="Why, for the next person on call.")] = "",
    config: ConfigOpt = None,
) -> None:
    """Add a silence; a running daemon applies it within one eval_interval."""
    import time

    from lookout.alerts.outbox import silence_from_request

    matchers = {}
    for pair in match or []:
        name, sep, value = pair.partition("=")
        if not sep:
            err.print(f"[red]error:[/red] --match {pair!r}: use LABEL=VALUE")
            raise typer.Exit(2)
        matchers[name] = value
    body = {"rule": rule, "matchers": matchers, "duration": duration, "comment": comment}
    try:
        silence = silence_from_request(body, time.time())
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None

    async def add() -> None:
        async with _silence_book(_settings(config)) as book:
            await book.add_silence(silence)

    asyncio.run(add())
    console.print(f"silence {silence.id} until {_when(silence.ends_at)}", highlight=False)


@silence_app.command("list")
def silence_list(config: ConfigOpt = None) -> None:
    """Silences in force now."""
    import time

    async def active() -> list[Any]:
        async with _silence_book(_settings(config)) as book:
            return list(await book.silences(active_at=time.time()))

    silences = asyncio.run(active())
    table = Table(title="active silences")
    for col in ("id", "rule", "matchers", "until", "comment"):
        table.add_column(col)
    for x in silences:
        matchers = ", ".join(f"{k}={v}" for k, v in x.matchers.items())
        table.add_row(x.id, x.rule or "*", matchers or "*", _when(x.ends_at), x.comment)
    console.print(table if silences else "no active silences")


@silence_app.command("expire")
def silence_expire(
    silence_id: Annotated[str, typer.Argument(help="The id `silence add` printed.")],
    config: ConfigOpt = None,
) -> None:
    """End a silence now."""
    import time

    async def expire() -> bool:
        async with _silence_book(_settings(config)) as book:
            return bool(await book.expire_silence(silence_id, time.time()))

    if not asyncio.run(expire()):
        err.print(f"[red]error:[/red] no active silence {silence_id!r}")
        raise typer.Exit(1)
    console.print(f"silence {silence_id} expired")


def _when(ts: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@app.command()
def status(config: ConfigOpt = None) -> None:
    """Show a running daemon's current series, drift and OOD, and the judge's last run."""
    settings = _settings(config)
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


def _register() -> None:
    from lookout.monitor.cli.baseline import baseline_app
    from lookout.monitor.cli.demo import demo
    from lookout.monitor.cli.judge import judge_app

    app.add_typer(baseline_app, name="baseline")
    app.add_typer(judge_app, name="judge")
    app.command()(demo)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


_register()
