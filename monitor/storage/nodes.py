"""The cluster's members as the store keeps them: one row per node, rewritten by its
heartbeat (monitor/cluster/membership.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from lookout.monitor.storage.base import PartialRow


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    started_at: float  # epoch seconds
    heartbeat_at: float  # epoch seconds, by the node's clock
    version: str
    records_last_minute: int  # counted by the node in the minute before its heartbeat


class FencedRole(Protocol):
    """A singleton role (monitor/cluster/leadership.py): whether this node holds it, and a
    transaction on its lock's session for the role's writes."""

    held: bool

    def fenced(self) -> AbstractAsyncContextManager[Any]: ...


@runtime_checkable
class ClusterStore(Protocol):
    """What the cluster's parts need of a store several nodes share (PostgreSQL)."""

    async def peer_partials(self, since: float) -> list[PartialRow]:
        """The other nodes' stored minutes from `since`, merged per (minute, app, model)."""
        ...

    async def beat(self, row: NodeRow) -> None:
        """Write this node's row (insert or replace)."""
        ...

    async def nodes(self) -> list[NodeRow]:
        """Every node's row, by node id."""
        ...

    async def role_holders(self) -> dict[int, str]:
        """Role number (leadership.py) -> the node whose session holds its lock now."""
        ...

    def use_retention_role(self, role: FencedRole) -> None:
        """Prune only while holding `role`, on its lock's session."""
        ...
