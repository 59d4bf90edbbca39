"""`lookout notify-test CHANNEL`: send one test notification through a configured channel."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import httpx
import typer

from lookout.monitor.cli.common import ConfigOpt, console, err, load_settings_or_exit


def notify_test(
    channel: Annotated[str, typer.Argument(help="A channel name from the config.")],
    config: ConfigOpt = None,
) -> None:
    """Send a test notification to CHANNEL and print the receiver's answer."""
    settings = load_settings_or_exit(config)
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
