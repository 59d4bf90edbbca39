"""`lookout baseline build|list|show|activate`: reference sets for the drift and OOD detectors.

A running daemon with the same store picks up a new or activated reference within one
eval_interval.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from pathlib import Path
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
    from lookout.monitor.config import Settings
    from lookout.monitor.storage.references import ReferenceInfo, References

baseline_app = typer.Typer(help="Reference sets for drift and OOD detection.")
_MAX_TEXTS = 20_000  # per (app, field); a deterministic sample beyond


def _open_store(settings: Settings) -> References:
    """Where the daemon keeps them: PostgreSQL in a cluster, else the local SQLite file."""
    from lookout.monitor.builders import open_references
    from lookout.monitor.cluster.node import cluster_enabled

    return open_references(settings, cluster=cluster_enabled(settings))


def _table(infos: list[ReferenceInfo]) -> Table:
    table = Table(
        "id",
        "app",
        "field",
        "version",
        "active",
        "size",
        "embedder",
        "source",
        "created",
        "drift thr.",
        "ood thr.",
    )
    for i in infos:
        table.add_row(
            str(i.id),
            i.app,
            i.field,
            str(i.version),
            "yes" if i.active else "",
            str(i.size),
            i.embedder,
            i.source,
            utc_time(i.created_at, "%Y-%m-%d %H:%M"),
            f"{i.drift_threshold:.3g}" if i.drift_threshold is not None else "-",
            f"{i.ood_threshold:.3g}" if i.ood_threshold is not None else "-",
        )
    return table


def _read(path: Path, settings: Settings, app: str | None) -> dict[tuple[str, str], list[str]]:
    from lookout.monitor.builders import decode_limits
    from lookout.monitor.ingest.records import decode_payload

    limits = decode_limits(settings)
    texts: dict[tuple[str, str], list[str]] = defaultdict(list)
    rejected = 0
    now = time.time()
    with path.open("rb") as f:
        for line in f:
            if not line.strip():
                continue
            decoded = decode_payload(line, None, now, limits)
            rejected += len(decoded.rejections)
            for record in decoded.records:
                if app is not None and record.app != app:
                    continue
                for field in settings.detectors.fields:
                    text = record.prompt if field == "prompt" else record.response
                    if text:
                        texts[(record.app, field)].append(text[:2000])
    if rejected:
        err.print(f"[yellow]{rejected} line(s) rejected[/yellow] (not the wire format)")
    return texts


async def _build(
    settings: Settings, path: Path, app: str | None, activate: bool
) -> list[ReferenceInfo]:
    import numpy as np

    from lookout.detectors.reference import DetectorParams, fit_reference
    from lookout.monitor.detection.embedding import build_embedder

    d = settings.detectors
    params = DetectorParams(drift_window=d.drift.window, drift_ert=d.drift.ert, ood_fpr=d.ood.fpr)
    groups = _read(path, settings, app)
    if not groups:
        err.print(
            f"[red]error:[/red] no prompts or responses{f' for app {app!r}' if app else ''}"
            f" in {path}"
        )
        raise typer.Exit(1)
    # A one-off batch job, not beside ingest: every core for torch (the same embeddings).
    offline = d.embedder.model_copy(update={"threads": None})
    embedder = await asyncio.to_thread(build_embedder, offline)
    saved = []
    async with _open_store(settings) as references:
        for (group_app, field), found in sorted(groups.items()):
            texts = found
            if len(texts) < params.min_reference():
                err.print(
                    f"[yellow]skipped[/yellow] {group_app}/{field}: {len(texts)} texts, "
                    f"need {params.min_reference()} (4 x drift.window)"
                )
                continue
            if len(texts) > _MAX_TEXTS:
                keep = np.random.default_rng(0).choice(len(texts), _MAX_TEXTS, replace=False)
                texts = [texts[i] for i in sorted(keep)]
            with console.status(f"embedding and calibrating {group_app}/{field} ({len(texts)})"):
                x = await asyncio.to_thread(embedder.embed, texts)
                fitted = await asyncio.to_thread(fit_reference, x, params)
            saved.append(
                await references.save(
                    app=group_app,
                    field=field,
                    source=f"file:{path.name}",
                    embedder=embedder.name,
                    size=len(texts),
                    states=fitted.states(),
                    texts=[t[:300] for t in texts],
                    now=time.time(),
                    drift_threshold=fitted.drift.threshold,
                    ood_threshold=fitted.ood.threshold,
                    activate=activate,
                )
            )
    return saved


@baseline_app.command("build")
def build(
    input: Annotated[
        Path,
        typer.Option(
            "--input", "-i", help="Records, one JSON per line.", exists=True, dir_okay=False
        ),
    ],
    app: Annotated[str | None, typer.Option(help="Only this app's records.")] = None,
    activate: Annotated[bool, typer.Option(help="Make it the active reference.")] = True,
    config: ConfigOpt = None,
) -> None:
    """Build a reference per app and field from a JSONL file of records."""
    settings = load_settings_or_exit(config)
    saved = asyncio.run(_build(settings, input, app, activate))
    if not saved:
        raise typer.Exit(1)
    console.print(_table(saved))


@baseline_app.command("list")
def list_(config: ConfigOpt = None) -> None:
    """Every reference version; the active ones are marked."""

    async def work() -> list[ReferenceInfo]:
        async with _open_store(load_settings_or_exit(config)) as references:
            return await references.list()

    console.print(_table(asyncio.run(work())))


@baseline_app.command("show")
def show(ref_id: int, config: ConfigOpt = None, examples: int = 5) -> None:
    """One reference: its calibration and a few of its texts."""

    async def work() -> tuple[ReferenceInfo, list[str]] | None:
        async with _open_store(load_settings_or_exit(config)) as references:
            reference = await references.load(ref_id)
            return None if reference is None else (reference.info, reference.texts[:examples])

    found = asyncio.run(work())
    if found is None:
        err.print(f"[red]error:[/red] no reference {ref_id}")
        raise typer.Exit(1)
    info, texts = found
    console.print(_table([info]))
    for text in texts:
        console.print(f"  - {text}", highlight=False, markup=False)


@baseline_app.command("activate")
def activate_(ref_id: int, config: ConfigOpt = None) -> None:
    """Make a reference version the active one for its app and field."""

    async def work() -> ReferenceInfo | None:
        async with _open_store(load_settings_or_exit(config)) as references:
            return await references.activate(ref_id)

    info = asyncio.run(work())
    if info is None:
        err.print(f"[red]error:[/red] no reference {ref_id}")
        raise typer.Exit(1)
    console.print(
        f"reference {info.id} ({info.app}/{info.field} v{info.version}) is active", highlight=False
    )
