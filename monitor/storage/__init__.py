"""Durable state: the store interface (base.py) and its implementations; `open_store` picks one
from the URL's scheme."""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookout.errors import ConfigError
from lookout.monitor.storage.base import (
    PartialRow,
    RejectedSample,
    RollupPoint,
    Store,
    sqlite_path,
)
from lookout.monitor.storage.sqlite import SqliteStore

if TYPE_CHECKING:
    from lookout.clock import Clock
    from lookout.monitor.config import StoreConfig
    from lookout.monitor.metrics.prom import IngestMetrics

__all__ = ["PartialRow", "RejectedSample", "RollupPoint", "Store", "open_store", "sqlite_path"]


def open_store(
    cfg: StoreConfig,
    metrics: IngestMetrics,
    clock: Clock,
    *,
    keep_ids: int = 100_000,
    node: str = "",
) -> Store:
    """`keep_ids`: how many recent record ids to keep for recognising redeliveries; `node`:
    the name this node's partial rows go under (PostgreSQL, where several nodes may write)."""
    if cfg.url.startswith("sqlite:///"):
        return SqliteStore(cfg, metrics, clock, keep_ids=keep_ids)
    if cfg.url.startswith(("postgresql://", "postgres://")):
        try:
            from lookout.monitor.storage.postgres import PostgresStore
        except ImportError as exc:  # psycopg is the `postgres` extra
            raise ConfigError(
                f"store.url is a PostgreSQL URL, which needs the postgres extra: "
                f"pip install 'lookout-llm[postgres]' ({exc})"
            ) from exc
        return PostgresStore(cfg, metrics, clock, keep_ids=keep_ids, node=node)
    raise ConfigError("store.url must be sqlite:///PATH or postgresql://...")
