"""`lookout status` and the series table `lookout replay` shares: fit to the terminal.

By default a few columns (count, qps, errors, p95, tokens/s, cost) in a borderless table; when
even that does not fit, one block per app. App and model names are never cut. `--wide` shows
every series, as wide as that takes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any

import httpx
import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table

from lookout.monitor.cli.cluster_status import print_cluster
from lookout.monitor.cli.common import ConfigOpt, console, err, load_settings_or_exit


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    key: str
    digits: int = 3
    scale: float = 1.0
    block: str = ""  # the label in the block layout, with its unit placeholder

    def text(self, row: Any) -> str:
        value = _get(row, self.key)
        if self.key == "count":
            return str(value)
        if value is None:
            return "-"
        value *= self.scale
        # Fewer decimals as the value grows, so a cell stays about six characters wide.
        digits = min(self.digits, max(0, 5 - len(str(int(abs(value))))))
        return f"{value:.{digits}f}"


COMPACT = (
    Column("count", "count", block="{} records"),
    Column("qps", "qps", block="{} req/s"),
    Column("err %", "error_rate", 1, 100.0, block="{}% errors"),
    Column("p95 s", "latency_p95", block="p95 {} s"),
    Column("tok/s", "tps", 1, block="{} tok/s"),
    Column("cost/h", "cost_per_hour", 4, block="{}/h"),
)
WIDE = (
    *COMPACT[:3],
    Column("p50 s", "latency_p50"),
    COMPACT[3],
    Column("p99 s", "latency_p99"),
    Column("ttft p95", "ttft_p95"),
    COMPACT[4],
    Column("gen tok/s p50", "gen_tps_p50", 1),
    Column("tok/req", "tokens_per_request", 1),
    COMPACT[5],
)


def _get(row: Any, name: str) -> Any:
    return row[name] if isinstance(row, dict) else getattr(row, name)


def _sorted(series: Iterable[Any]) -> list[Any]:
    return sorted(series, key=lambda s: (_get(s, "app") == "*", _get(s, "app"), _get(s, "model")))


def _name_column(table: Table, header: str, names: Iterable[str]) -> None:
    """A column that is never squeezed: as wide as its longest name."""
    width = max([len(header), *(len(n) for n in names)])
    table.add_column(header, no_wrap=True, min_width=width)


def series_table(series: list[Any], title: str, *, wide: bool = False) -> Table:
    rows = _sorted(series)
    columns = WIDE if wide else COMPACT
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    _name_column(table, "app", (_get(s, "app") for s in rows))
    _name_column(table, "model", (_get(s, "model") for s in rows))
    for col in columns:
        table.add_column(col.header, justify="right", no_wrap=True)
    for s in rows:
        cells = [escape(_get(s, "app")), escape(_get(s, "model"))]
        table.add_row(*cells, *(col.text(s) for col in columns))
    return table


def series_blocks(series: list[Any], title: str) -> str:
    """One block per app, two lines per model: for terminals too narrow for the table."""
    lines = [f"[italic]{title}[/italic]"]
    app = None
    for s in _sorted(series):
        if _get(s, "app") != app:
            app = _get(s, "app")
            lines.append(f"[bold]{escape(app)}[/bold]")
        model = _get(s, "model")
        lines.append(f"  {'all models' if model == '*' else escape(model)}")
        lines.append("    " + ", ".join(col.block.format(col.text(s)) for col in COMPACT))
    return "\n".join(lines)


def _fit(out: Console, table: Table, blocks: Callable[[], str], *, wide: bool) -> None:
    """`table`; with `wide` as wide as it takes, else within the terminal or as `blocks`."""
    # Measured without the terminal's limit, which the measurement would otherwise clamp to.
    needed = Measurement.get(out, out.options.update_width(10_000), table).maximum
    if wide:
        terminal = out.width  # print's own `width` cannot exceed the console's
        out.width = max(needed, terminal)
        try:
            out.print(table)
        finally:
            out.width = terminal
    elif needed <= out.width:
        out.print(table)
    else:
        out.print(blocks(), highlight=False)


def print_series(out: Console, series: list[Any], title: str, *, wide: bool = False) -> None:
    table = series_table(series, title, wide=wide)
    _fit(out, table, lambda: series_blocks(series, title), wide=wide)


_DETECTORS = "drift and out-of-distribution"


def _detector_cells(d: dict[str, Any]) -> tuple[str, str, str, str, str, str]:
    score, rate = d.get("drift_score"), d.get("ood_rate")
    return (
        escape(d["app"]),
        d["field"],
        str(d["reference_id"]) if d.get("reference_id") is not None else "building",
        "-" if score is None else f"{score:.2f}",
        "[red]yes[/red]" if d.get("drifted") else "no",
        "-" if rate is None else f"{rate:.1%}",
    )


def detector_blocks(detectors: list[dict[str, Any]]) -> str:
    lines = [f"[italic]{_DETECTORS}[/italic]"]
    for d in detectors:
        app, field, ref, score, drifted, rate = _detector_cells(d)
        lines.append(f"[bold]{app}[/bold] {field}: reference {ref}, drift score {score}")
        lines.append(f"  drifted {drifted}, ood rate {rate}")
    return "\n".join(lines)


def detector_table(detectors: list[dict[str, Any]]) -> Table:
    table = Table(title=_DETECTORS, box=box.SIMPLE_HEAD, pad_edge=False)
    _name_column(table, "app", (d["app"] for d in detectors))
    table.add_column("field", no_wrap=True)
    for col in ("reference", "drift score", "drifted", "ood rate"):
        table.add_column(col, justify="right", no_wrap=True)
    for d in detectors:
        table.add_row(*_detector_cells(d))
    return table


def anomaly_table(anomalies: list[dict[str, Any]]) -> Table:
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


def feedback_table(points: list[dict[str, Any]]) -> Table:
    """Users' feedback per (app, key): events, mean score, share negative."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for p in points:
        rows.setdefault((p["app"], p["key"]), {})[p["metric"]] = p["value"]
    table = Table(title="user feedback", box=box.SIMPLE_HEAD, pad_edge=False)
    _name_column(table, "app", (app for app, _ in rows))
    table.add_column("key", no_wrap=True)
    for col in ("events", "mean score", "negative"):
        table.add_column(col, justify="right", no_wrap=True)
    for (app, key), values in sorted(rows.items()):
        negative = values.get("negative_feedback_rate")
        table.add_row(
            escape(app),
            escape(key),
            f"{values.get('feedback_count') or 0:.0f}",
            f"{values.get('feedback_score') or 0:.3g}",
            "-" if negative is None else f"{negative:.1%}",
        )
    return table


def engagement_table(points: list[dict[str, Any]]) -> Table:
    """Per app: distinct users and sessions, and the sessions that ended in the window."""
    rows: dict[str, dict[str, Any]] = {}
    for p in points:
        rows.setdefault(p["app"], {})[p["metric"]] = p["value"]
    table = Table(title="engagement", box=box.SIMPLE_HEAD, pad_edge=False)
    _name_column(table, "app", rows)
    columns = (
        ("users", "active_users", "{:.0f}"),
        ("sessions", "active_sessions", "{:.0f}"),
        ("req/session", "requests_per_session", "{:.1f}"),
        ("session p50 s", "session_duration_p50", "{:.0f}"),
        ("p95 s", "session_duration_p95", "{:.0f}"),
    )
    for header, _, _ in columns:
        table.add_column(header, justify="right", no_wrap=True)
    for app, values in sorted(rows.items()):
        cells = [
            "-" if values.get(key) is None else fmt.format(values[key]) for _, key, fmt in columns
        ]
        table.add_row(escape(app), *cells)
    return table


_TOOL_COLUMNS = {  # series -> (column, format); retrieval shows as a tool named `retrieval`
    "tool_calls_per_request": ("per request", "{:.2f}"),
    "retrieval_rate": ("per request", "{:.2f}"),
    "tool_error_rate": ("errors", "{:.1%}"),
    "tool_latency_p95": ("p95 s", "{:.3f}"),
    "retrieval_latency_p95": ("p95 s", "{:.3f}"),
    "empty_retrieval_rate": ("empty", "{:.1%}"),
}


def tools_table(points: list[dict[str, Any]]) -> Table:
    """Per app and tool: calls per request, errors, p95 latency; retrieval's empty share."""
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for p in points:
        column, fmt = _TOOL_COLUMNS[p["metric"]]
        cells = rows.setdefault((p["app"], p.get("tool") or "retrieval"), {})
        cells[column] = "-" if p["value"] is None else fmt.format(p["value"])
    table = Table(title="tools and retrieval", box=box.SIMPLE_HEAD, pad_edge=False)
    _name_column(table, "app", (app for app, _ in rows))
    _name_column(table, "tool", (tool for _, tool in rows))
    headers = ("per request", "errors", "p95 s", "empty")
    for header in headers:
        table.add_column(header, justify="right", no_wrap=True)
    for (app, name), cells in sorted(rows.items()):
        table.add_row(escape(app), escape(name), *(cells.get(h, "-") for h in headers))
    return table


def print_status(out: Console, body: dict[str, Any], *, wide: bool = False) -> None:
    """A daemon's `/api/v1/status` answer, for people."""
    bus = "connected" if body["bus"]["connected"] else "[red]not connected[/red]"
    out.print(f"lookout {body['version']}: bus {bus}, queue {body['ingest']['queue_depth']}")
    window = f"last {body['window_s']:.0f} s"
    if body["series"]:
        print_series(out, body["series"], window, wide=wide)
    else:
        out.print("no records yet")
    if detectors := body.get("detectors"):
        _fit(out, detector_table(detectors), lambda: detector_blocks(detectors), wide=wide)
    if anomalies := body.get("anomalies"):
        out.print(anomaly_table(anomalies))
    if feedback := body.get("feedback"):
        out.print(feedback_table(feedback))
    if engagement := body.get("engagement"):
        out.print(engagement_table(engagement))
    if tools := body.get("tools"):
        out.print(tools_table(tools))
    judge = body.get("judge")
    if judge and judge.get("last_run"):
        run = judge["last_run"]
        rates = [
            f"{escape(p['app'])} {p['value']:.0%} of {p['count']}"
            for p in judge.get("series", [])
            if p["metric"] == "judge_pass_rate" and p["value"] is not None
        ]
        out.print(
            f"judge: last run {run['outcome']} ({run['judged']} judged, "
            f"{run['failed']} failed, {run['skipped']} skipped); pass rate: "
            f"{', '.join(rates) or 'no verdicts in the window'}"
        )
        print_evaluations(out, judge.get("series", []))


def print_evaluations(out: Console, series: list[dict[str, Any]]) -> None:
    """The judge's reference similarity and shadow preference, one line each if any."""
    similar = [
        f"{escape(p['app'])}/{escape(p['model'])} {p['method']} {p['value']:.2f} of {p['count']}"
        for p in series
        if p["metric"] == "judge_reference_similarity" and p["value"] is not None
    ]
    if similar:
        out.print(f"judge reference similarity: {', '.join(similar)}")
    preferred = [
        f"{escape(p['app'])}: {escape(p['shadow_model'])} over {escape(p['model'])} "
        f"{p['value']:+.2f} of {p['count']} pairs"
        for p in series
        if p["metric"] == "judge_preference" and p["value"] is not None
    ]
    if preferred:
        out.print(f"judge preference (shadow over production): {', '.join(preferred)}")


def status(
    config: ConfigOpt = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Every series (p50/p99, TTFT, tokens), however wide.")
    ] = False,
) -> None:
    """Show a running daemon's current series, drift and OOD, users' feedback, the judge's
    last run, and the cluster's nodes."""
    settings = load_settings_or_exit(config)
    host = "127.0.0.1" if settings.api.host in ("0.0.0.0", "::") else settings.api.host  # noqa: S104
    base = f"http://{host}:{settings.api.port}"
    url = f"{base}/api/v1/status"
    headers = {}
    if settings.api.token is not None:
        headers["Authorization"] = f"Bearer {settings.api.token.get_secret_value()}"
    try:
        response = httpx.get(url, headers=headers, timeout=5.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        err.print(f"[red]error:[/red] no daemon answering at {url}: {exc}", highlight=False)
        raise typer.Exit(1) from None
    print_status(console, response.json(), wide=wide)
    print_cluster(console, base, headers)
