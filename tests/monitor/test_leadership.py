"""Singleton roles on PostgreSQL: one holder per role, a standby takes over when the holder
goes, and a holder whose session died can no longer write (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import psycopg
import pytest

from lookout.monitor.cluster.leadership import Leadership, Role
from lookout.monitor.storage.pg_leases import NotLeader, PgRoleLock, role_holders
from tests.stores import pg_database

pytestmark = pytest.mark.asyncio
TIMEOUT_S = 30.0  # generous: the box may be loaded


@pytest.fixture
def db_url() -> Iterator[str]:
    with pg_database() as url:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE TABLE writes (node TEXT NOT NULL)")
        yield url


def leadership(url: str, node: str) -> Leadership:
    locks = {role: PgRoleLock(url, role.value, node=node, connect_timeout_s=5.0) for role in Role}
    return Leadership(locks, retry_interval_s=0.05, check_interval_s=0.05)  # type: ignore[arg-type]


async def holds_all(lead: Leadership) -> None:
    for gate in lead.gates.values():
        await asyncio.wait_for(gate.wait_held(), TIMEOUT_S)


async def lost(lead: Leadership, role: Role) -> None:
    gate = lead.gate(role)
    async with asyncio.timeout(TIMEOUT_S):
        while gate.held:
            await gate.wait_change()


async def holders(url: str) -> dict[str, str]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return {Role(k).label: node for k, node in (await role_holders(conn)).items()}


async def write(lead: Leadership, node: str) -> None:
    async with lead.gate(Role.ALERTS).fenced() as conn:
        await conn.execute("INSERT INTO writes VALUES (%s)", (node,))


def written(url: str) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [r[0] for r in conn.execute("SELECT node FROM writes").fetchall()]


async def test_one_node_holds_each_role_and_a_standby_takes_over_on_a_clean_stop(
    db_url: str,
) -> None:
    retries = 0
    tried = asyncio.Event()

    async def counting_sleep(seconds: float) -> None:
        nonlocal retries
        retries += 1
        if retries >= 5 * len(Role):
            tried.set()
        await asyncio.sleep(seconds)

    a = leadership(db_url, "a")
    await a.__aenter__()
    try:
        await holds_all(a)
        locks = {r: PgRoleLock(db_url, r.value, node="b", connect_timeout_s=5.0) for r in Role}
        b = Leadership(locks, retry_interval_s=0.02, sleep=counting_sleep)  # type: ignore[arg-type]
        async with b:
            await asyncio.wait_for(tried.wait(), TIMEOUT_S)  # b tried each role ~5 times
            assert b.held() == []
            assert await holders(db_url) == {r.label: "a" for r in Role}
            await a.__aexit__(None, None, None)
            await holds_all(b)
            assert a.held() == []
            assert await holders(db_url) == {r.label: "b" for r in Role}
            assert b.gate(Role.ALERTS).term == 1
    finally:
        if a.held():
            await a.__aexit__(None, None, None)


async def test_a_holder_whose_session_died_cannot_write_and_loses_the_role(db_url: str) -> None:
    async with leadership(db_url, "a") as a, leadership(db_url, "b") as b:
        await asyncio.wait_for(
            asyncio.wait(
                [asyncio.ensure_future(x.gate(Role.ALERTS).wait_held()) for x in (a, b)],
                return_when=asyncio.FIRST_COMPLETED,
            ),
            TIMEOUT_S,
        )
        first, second = (a, b) if a.gate(Role.ALERTS).held else (b, a)
        name = "a" if first is a else "b"
        await write(first, name)
        with pytest.raises(NotLeader):
            await write(second, "standby")
        # The holder's session ends under it (a server restart, a cut link, an operator).
        with psycopg.connect(db_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND datname = current_database()",
                (f"lookout-leader:{name}",),
            )
        with pytest.raises(NotLeader):
            await write(first, name + "-after-death")
        await asyncio.wait_for(second.gate(Role.ALERTS).wait_held(), TIMEOUT_S)
        await write(second, "new-leader")
        assert written(db_url) == [name, "new-leader"]
        await lost(first, Role.ALERTS)


async def test_a_node_alone_holds_every_role_without_a_database() -> None:
    async with Leadership(None) as alone:
        assert sorted(alone.held()) == sorted(r.label for r in Role)
        with pytest.raises(NotLeader):
            async with alone.gate(Role.ALERTS).fenced():
                pass
