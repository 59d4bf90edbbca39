"""This node's identity: the name its MQTT session and (with PostgreSQL) its rows go under.

Several nodes that share the work (`bus.shared_group`) each need a session of their own with
the broker, and the same one again after a restart, so that the messages queued for a node
while it was down reach it when it returns (docs/scale-out.md). The hostname is stable and
unique per host; several nodes on one host set `node.id` each (`lookout@.service` does).
"""

from __future__ import annotations

import re
import socket

from pydantic import Field, field_validator

from lookout.monitor.config.base import Section
from lookout.monitor.config.service import BusConfig

_NODE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def _hostname() -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64].strip(".-_")
    return name or "lookout"


class NodeConfig(Section):
    id: str = Field(default_factory=_hostname)

    @field_validator("id")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not _NODE_ID.fullmatch(value):
            raise ValueError(
                f"node.id {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting with "
                "a letter or digit"
            )
        return value


def mqtt_client_id(bus: BusConfig, node: NodeConfig) -> str:
    """`bus.client_id` if set; else `lookout` for a single node (the id it always had, so an
    upgrade keeps its session) and `lookout-<node.id>` for a node of a shared group."""
    if bus.client_id:
        return bus.client_id
    return "lookout" if bus.shared_group is None else f"lookout-{node.id}"
