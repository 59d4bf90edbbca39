"""This node's part in the cluster, built by the daemon: whether it reads the cluster-wide
series, the windows its rules, status, charts and rollups read, its heartbeat, the view of
`/api/v1/cluster`, and `lookout_node_info` on its /metrics."""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable

from prometheus_client import CollectorRegistry, Info

from lookout import __version__
from lookout.clock import Clock
from lookout.errors import ConfigError
from lookout.monitor.cluster.leadership import Leadership, Role, RoleLock
from lookout.monitor.cluster.membership import Heartbeat, SingleNode
from lookout.monitor.cluster.views import ClusterView
from lookout.monitor.cluster.windows import ClusterWindows
from lookout.monitor.config import Settings
from lookout.monitor.metrics.prom import WindowCollector
from lookout.monitor.metrics.windows import ALL, WindowedMetrics, WindowStats
from lookout.monitor.storage import Store
from lookout.monitor.storage.nodes import ClusterStore


def cluster_enabled(settings: Settings) -> bool:
    """`cluster.enabled`, or when unset: a PostgreSQL store and a shared group."""
    on_postgres = not settings.store.url.startswith("sqlite:")
    if settings.cluster.enabled is None:
        return on_postgres and settings.bus.shared_group is not None
    if settings.cluster.enabled and not on_postgres:
        raise ConfigError("cluster.enabled needs a PostgreSQL store (store.url postgresql://)")
    return settings.cluster.enabled


def leadership(settings: Settings, enabled: bool) -> Leadership:
    """Advisory locks on the store's PostgreSQL in a cluster; else every role held here."""
    c = settings.cluster
    if not enabled:
        return Leadership(None)
    from lookout.monitor.storage.pg_leases import PgRoleLock  # psycopg: the postgres extra

    s = settings.store
    locks: dict[Role, RoleLock] = {
        role: PgRoleLock(
            s.url, role.value, node=settings.node.id, connect_timeout_s=s.connect_timeout_s
        )
        for role in Role
    }
    return Leadership(
        locks, retry_interval_s=c.leader_retry_interval, check_interval_s=c.leader_check_interval
    )


def counted_last_minute(windows: WindowedMetrics) -> Callable[[float], int]:
    def counted(now: float) -> int:
        stats = windows.range(now - 60.0, now + windows.bucket_s, now)
        return sum(s.count for s in stats if s.app == ALL and s.model == ALL)

    return counted


class NodeCluster:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        windows: WindowedMetrics,
        clock: Clock,
        *,
        registry: CollectorRegistry,
        new_windows: Callable[[float], WindowedMetrics],
    ) -> None:
        """`new_windows(started_at)`: empty windows shaped like `windows`."""
        c = settings.cluster
        self.enabled = cluster_enabled(settings)
        members: ClusterStore = store if isinstance(store, ClusterStore) else SingleNode()
        self._members = members
        self.windows: WindowedMetrics | ClusterWindows = windows
        self.cluster_windows: ClusterWindows | None = None
        if self.enabled:
            self.windows = self.cluster_windows = ClusterWindows(
                windows,
                members,
                clock,
                lambda: new_windows(math.inf),
                node=settings.node.id,
                refresh_interval_s=c.refresh_interval,
            )
        node = settings.node.id
        self.heartbeat = Heartbeat(
            members,
            clock,
            node=node,
            version=__version__,
            counted_last_minute=counted_last_minute(windows),
            interval_s=c.heartbeat_interval,
        )
        self.leadership = leadership(settings, self.enabled)
        if self.enabled:
            members.use_retention_role(self.leadership.gate(Role.RETENTION))
        self.view = ClusterView(
            node,
            self.enabled,
            members.nodes,
            clock,
            c.alive_within,
            roles=self._roles_by_node,
        )
        self._default_window_s = settings.metrics.default_window
        self._clock = clock
        if self.enabled:  # one exporter of the cluster-wide gauges: a `sum by` stays right
            registry.register(WindowCollector(self._leader_stats, cluster=True))
        info = Info("lookout_node", "This node: its node.id, version", registry=registry)
        info.info({"node": node, "version": __version__, "cluster": str(self.enabled).lower()})

    def _leader_stats(self) -> list[WindowStats]:
        if not self.leadership.gate(Role.ALERTS).held:
            return []
        return self.windows.query(self._default_window_s, self._clock.now())

    async def _roles_by_node(self) -> dict[str, list[str]]:
        """Read from the locks themselves in a cluster (what each session holds now)."""
        if not self.enabled:
            return {self.heartbeat.node: self.leadership.held()}
        by_node: dict[str, list[str]] = {}
        for key, node in sorted((await self._members.role_holders()).items()):
            by_node.setdefault(node, []).append(Role(key).label)
        return by_node

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[NodeCluster]:
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.leadership)
            await stack.enter_async_context(self.heartbeat)
            if self.cluster_windows is not None:
                await stack.enter_async_context(self.cluster_windows)
            yield self
