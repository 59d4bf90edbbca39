"""Cluster settings: whether this node reads the cluster-wide series, and how often it says
it is alive (docs/scale-out.md)."""

from __future__ import annotations

from pydantic import Field

from lookout.durations import DurationS
from lookout.monitor.config.base import Section


class ClusterConfig(Section):
    # None: on when the store is PostgreSQL and the node is in a shared group
    # (`bus.shared_group`); true needs a PostgreSQL store.
    enabled: bool | None = None
    # How often this node writes its heartbeat and re-reads the other nodes' partials.
    heartbeat_interval: DurationS = Field(default=5.0, gt=0)
    refresh_interval: DurationS = Field(default=5.0, gt=0)
    # A node whose last heartbeat is older than this is listed as not alive.
    alive_within: DurationS = Field(default=15.0, gt=0)
    # Leadership (singleton roles on PostgreSQL advisory locks): how often a standby tries to
    # take a role, and how often the holder checks that its lock's session is alive.
    leader_retry_interval: DurationS = Field(default=3.0, gt=0)
    leader_check_interval: DurationS = Field(default=2.0, gt=0)
