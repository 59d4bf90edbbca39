"""`lookout status`'s cluster section: the nodes `/api/v1/cluster` lists, whether each is
alive, the roles it holds, and its share of the last minute's records (docs/scale-out.md)."""

from __future__ import annotations

from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table


def cluster_table(body: dict[str, Any]) -> Table:
    now = body["now"]
    title = "cluster" if body["cluster"] else "node (not in a cluster)"
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("node", no_wrap=True)
    for col in ("alive", "heartbeat", "records/min", "share", "version"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("roles")
    for n in body["nodes"]:
        mark = " (this)" if n["node"] == body["node"] else ""
        share = n["share"]
        table.add_row(
            escape(n["node"]) + mark,
            "yes" if n["alive"] else "[red]no[/red]",
            f"{max(0.0, now - n['heartbeat_at']):.0f} s ago",
            str(n["records_last_minute"]),
            "-" if share is None else f"{share:.0%}",
            escape(n["version"]),
            escape(", ".join(n.get("roles", [])) or "-"),
        )
    return table


def print_cluster(out: Console, base_url: str, headers: dict[str, str]) -> None:
    """The cluster section, if the daemon answers `/api/v1/cluster` (older ones do not)."""
    try:
        response = httpx.get(f"{base_url}/api/v1/cluster", headers=headers, timeout=5.0)
    except httpx.HTTPError:
        return
    if response.status_code == 200:
        out.print(cluster_table(response.json()))
