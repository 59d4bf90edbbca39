"""`GET /api/v1/cluster`, typed: the nodes, their last heartbeat, whether they are alive and
each one's share of the last minute's records (docs/api.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import BaseModel

from lookout.clock import Clock
from lookout.monitor.storage.nodes import NodeRow


class NodeView(BaseModel):
    node: str
    version: str
    started_at: float
    heartbeat_at: float
    alive: bool
    records_last_minute: int
    roles: list[str]  # the singleton roles whose lock this node holds (leadership.py)
    # Of the records the alive nodes counted in the minute before their heartbeats; None for
    # a node not alive, or when no alive node counted any.
    share: float | None


class ClusterResponse(BaseModel):
    node: str  # the node that answers
    cluster: bool  # whether this node reads the cluster-wide series
    now: float
    alive_within_s: float
    nodes: list[NodeView]


def node_views(
    rows: list[NodeRow], now: float, alive_within_s: float, roles: dict[str, list[str]]
) -> list[NodeView]:
    alive = {r.node for r in rows if now - r.heartbeat_at <= alive_within_s}
    total = sum(r.records_last_minute for r in rows if r.node in alive)
    return [
        NodeView(
            node=r.node,
            version=r.version,
            started_at=r.started_at,
            heartbeat_at=r.heartbeat_at,
            alive=r.node in alive,
            records_last_minute=r.records_last_minute,
            roles=roles.get(r.node, []),
            share=r.records_last_minute / total if total and r.node in alive else None,
        )
        for r in rows
    ]


@dataclass(frozen=True)
class ClusterView:
    node: str
    cluster: bool
    nodes: Callable[[], Awaitable[list[NodeRow]]]
    clock: Clock
    alive_within_s: float
    roles: Callable[[], Awaitable[dict[str, list[str]]]]  # node -> roles held

    async def status(self) -> ClusterResponse:
        rows = await self.nodes()
        roles = await self.roles()
        now = self.clock.now()
        return ClusterResponse(
            node=self.node,
            cluster=self.cluster,
            now=now,
            alive_within_s=self.alive_within_s,
            nodes=node_views(rows, now, self.alive_within_s, roles),
        )
