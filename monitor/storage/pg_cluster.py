"""The cluster's queries on PostgreSQL: the other nodes' partials, and the nodes table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lookout.monitor.storage.nodes import NodeRow
from lookout.monitor.storage.pg_partials import merged_by_minute

if TYPE_CHECKING:
    from psycopg import AsyncConnection

    from lookout.monitor.storage.base import PartialRow

_PEER_PARTIALS = (
    "SELECT minute, app, model, count, errors, output_tokens, tokens, token_records, cost,"
    " latency_s, ttft_s, gen_tps FROM partials WHERE minute >= %s AND node <> %s"
    " ORDER BY minute, app, model, node"
)
_BEAT = (
    "INSERT INTO nodes (node, started_at, heartbeat_at, version, records_last_minute)"
    " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (node) DO UPDATE SET"
    " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
    " version = excluded.version, records_last_minute = excluded.records_last_minute"
)
_NODES = (
    "SELECT node, started_at, heartbeat_at, version, records_last_minute FROM nodes ORDER BY node"
)


async def peer_partials(db: AsyncConnection[Any], since: float, node: str) -> list[PartialRow]:
    """Every node's minutes from `since` but `node`'s, merged per (minute, app, model)."""
    cur = await db.execute(_PEER_PARTIALS, (since, node))
    return merged_by_minute(await cur.fetchall())


async def beat(db: AsyncConnection[Any], row: NodeRow) -> None:
    await db.execute(
        _BEAT,
        (row.node, row.started_at, row.heartbeat_at, row.version, row.records_last_minute),
    )


async def nodes(db: AsyncConnection[Any]) -> list[NodeRow]:
    cur = await db.execute(_NODES)
    return [NodeRow(n, s, h, v, int(r)) for n, s, h, v, r in await cur.fetchall()]
