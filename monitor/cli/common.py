"""What every `lookout` subcommand shares: the consoles, the --config option, loading settings.

Subcommand modules import from here and main.py imports the subcommand modules, so imports go
one way: main -> subcommands -> common.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from lookout.errors import LookoutError
from lookout.monitor.config import Settings, load_settings

console = Console()
err = Console(stderr=True)

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", envvar="LOOKOUT_CONFIG", help="YAML config file."),
]


def load_settings_or_exit(
    config: Path | None, *, unset: list[str] | None = None, **overrides: Any
) -> Settings:
    """The settings from `config` (and the environment); exit 2 with the reason if invalid.

    With `unset`, references to secrets not at hand are listed there instead (`load_settings`).
    """
    try:
        settings = load_settings(config, unset=unset)
    except LookoutError as exc:
        # soft_wrap: a long message stays one line (the terminal wraps it, not mid-word by rich)
        err.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if overrides:
        settings = settings.model_copy(update=overrides)
    return settings


def utc_time(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """A Unix timestamp as UTC wall-clock text; "-" for none, "never" past the calendar (an
    infinite silence an earlier version let in)."""
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, UTC).strftime(fmt)
    except (OverflowError, OSError, ValueError):
        return "never" if ts > 0 else "-"
