"""Which node does the cluster's singleton work: alert evaluation, judge scheduling, retention
and reference fitting each have a role, held by one node at a time (docs/scale-out.md
"Leadership").

On PostgreSQL a role is an advisory lock (monitor/storage/pg_leases.py): a standby tries to take
it every `cluster.leader_retry_interval`, the holder checks its session every
`cluster.leader_check_interval` and gives the role up the moment the session fails. A role's
`term` counts the times this node took it: a component that took over reloads the state the
previous holder left (alert states, `active_since`) before acting. A node alone (SQLite) holds
every role from the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Protocol

import structlog

from lookout.errors import StoreError
from lookout.monitor.storage.pg_leases import NotLeader

log = structlog.get_logger(__name__)
Sleep = Callable[[float], Awaitable[None]]


class Role(enum.IntEnum):
    """The roles; the number is the advisory lock's second key (never renumber)."""

    ALERTS = 1
    JUDGE = 2
    RETENTION = 3
    REFERENCES = 4

    @property
    def label(self) -> str:
        return self.name.lower()


class RoleLock(Protocol):
    held: bool

    async def try_acquire(self) -> bool: ...

    async def still_held(self) -> bool: ...

    def fenced(self) -> contextlib.AbstractAsyncContextManager[Any]: ...

    async def release(self) -> None: ...


class RoleGate:
    """One role as the components that do its work see it."""

    def __init__(self, role: Role, lock: RoleLock | None) -> None:
        """`lock` None: a node alone, which holds the role for good."""
        self.role = role
        self._lock = lock
        self.held = lock is None
        self.term = 1 if lock is None else 0
        self._changed = asyncio.Event()

    async def wait_held(self) -> None:
        while not self.held:
            self._changed.clear()
            await self._changed.wait()

    async def wait_change(self) -> None:
        """Until the role is taken or lost (the next change after this call)."""
        self._changed.clear()
        await self._changed.wait()

    def fenced(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """A transaction on the lock's session (PostgreSQL only): the role's writes go there."""
        if self._lock is None:
            raise NotLeader(f"{self.role.label}: no lock session on a node alone")
        return self._lock.fenced()

    def _set(self, held: bool) -> None:
        if held == self.held:
            return
        self.held = held
        if held:
            self.term += 1
        self._changed.set()
        log.warning(
            "leader_acquired" if held else "leader_lost", role=self.role.label, term=self.term
        )


class Leadership:
    """Every role's gate, and on PostgreSQL the task per role that takes and keeps it."""

    def __init__(
        self,
        locks: dict[Role, RoleLock] | None,
        *,
        retry_interval_s: float = 3.0,
        check_interval_s: float = 2.0,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        """`locks` None: a node alone, holding every role."""
        self._locks = locks or {}
        self.gates = {role: RoleGate(role, self._locks.get(role)) for role in Role}
        self._retry_interval_s = retry_interval_s
        self._check_interval_s = check_interval_s
        self._sleep = sleep
        self._tasks = asyncio.TaskGroup()
        self._loops: list[asyncio.Task[None]] = []

    def gate(self, role: Role) -> RoleGate:
        return self.gates[role]

    def held(self) -> list[str]:
        return [role.label for role, gate in self.gates.items() if gate.held]

    async def __aenter__(self) -> Leadership:
        await self._tasks.__aenter__()
        for role, lock in self._locks.items():
            self._loops.append(
                self._tasks.create_task(
                    self._keep(self.gates[role], lock), name=f"leader-{role.label}"
                )
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for loop in self._loops:
            loop.cancel()
        await self._tasks.__aexit__(exc_type, exc, tb)
        for gate in self.gates.values():
            if self._locks.get(gate.role) is not None:
                gate._set(False)
        for lock in self._locks.values():
            await lock.release()

    async def _keep(self, gate: RoleGate, lock: RoleLock) -> None:
        while True:
            if gate.held:
                gate._set(await lock.still_held())
            else:
                gate._set(await self._try(gate, lock))
            await self._sleep(self._check_interval_s if gate.held else self._retry_interval_s)

    async def _try(self, gate: RoleGate, lock: RoleLock) -> bool:
        try:
            return await lock.try_acquire()
        except StoreError as exc:
            log.warning("leader_lock_unavailable", role=gate.role.label, error=str(exc))
            return False
