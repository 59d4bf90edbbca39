"""`lookout silence add|list|expire`: mute notifications (not alert state) for a while.

Silences live with the alert outbox: the node's SQLite file, or PostgreSQL for a cluster (where
every node reads them); a running daemon applies a new one within one eval_interval.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any

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
    import contextlib

    from lookout.alerts.outbox import Outbox
    from lookout.monitor.config import Settings

_UTC_FMT = "%Y-%m-%d %H:%M:%S UTC"

silence_app = typer.Typer(help="Mute notifications (not alert state) for a while.")


def _silence_store(settings: Settings) -> contextlib.AbstractAsyncContextManager[Outbox]:
    from lookout.monitor.alerting import outbox_for_cli

    return outbox_for_cli(settings)


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
    settings = load_settings_or_exit(config)
    try:
        silence = silence_from_request(body, time.time(), settings.silences.max_duration)
    except ValueError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None

    async def add() -> None:
        async with _silence_store(settings) as outbox:
            await outbox.add_silence(silence)

    asyncio.run(add())
    console.print(
        f"silence {silence.id} until {utc_time(silence.ends_at, _UTC_FMT)}", highlight=False
    )


@silence_app.command("list")
def silence_list(config: ConfigOpt = None) -> None:
    """Silences in force now."""
    import time

    async def active() -> list[Any]:
        async with _silence_store(load_settings_or_exit(config)) as outbox:
            return list(await outbox.silences(active_at=time.time()))

    silences = asyncio.run(active())
    table = Table(title="active silences")
    for col in ("id", "rule", "matchers", "until", "comment"):
        table.add_column(col)
    for x in silences:
        matchers = ", ".join(f"{k}={v}" for k, v in x.matchers.items())
        table.add_row(
            x.id, x.rule or "*", matchers or "*", utc_time(x.ends_at, _UTC_FMT), x.comment
        )
    console.print(table if silences else "no active silences")


@silence_app.command("expire")
def silence_expire(
    silence_id: Annotated[str, typer.Argument(help="The id `silence add` printed.")],
    config: ConfigOpt = None,
) -> None:
    """End a silence now."""
    import time

    async def expire() -> bool:
        async with _silence_store(load_settings_or_exit(config)) as outbox:
            return bool(await outbox.expire_silence(silence_id, time.time()))

    if not asyncio.run(expire()):
        err.print(f"[red]error:[/red] no active silence {silence_id!r}")
        raise typer.Exit(1)
    console.print(f"silence {silence_id} expired")
