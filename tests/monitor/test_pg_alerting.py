"""Alerting in a cluster, on a real PostgreSQL: every node delivers and each notification
reaches the receiver once; only the node holding the alert role writes; a node that takes over
carries `for:` and `repeat_interval` on from the committed state (docs/scale-out.md)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from prometheus_client import CollectorRegistry, Counter

from lookout.alerts.config import RuleConfig
from lookout.alerts.delivery import ChannelDelivery
from lookout.alerts.engine import AlertEngine, LeaderGate
from lookout.alerts.outbox import Outbox, OutboxEntry
from lookout.alerts.state import (
    Alert,
    AlertState,
    Notification,
    NotificationKind,
    Timing,
    step,
)
from lookout.alerts.webhook import WebhookNotifier
from lookout.clock import Clock, FakeClock, SystemClock
from lookout.monitor.cluster.leadership import Leadership, Role
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.metrics.windows import WindowedMetrics
from lookout.monitor.storage.pg_leases import NotLeader, PgRoleLock, application_name
from tests.alerts.outboxes import alerts_lock, pg_store
from tests.alerts.test_engine import api, post
from tests.conftest import Receiver, make_settings, running, sample_value
from tests.stores import pg_database

T0 = 1_700_000_000.0
TIMEOUT_S = 15.0
RULE = RuleConfig.model_validate(
    {
        "name": "errors",
        "metric": "error_rate",
        "window": 600,
        "where": {"app": "bot"},
        "threshold": 0.5,
        "for": "30s",
        "repeat_interval": "60s",
        "channels": ["hook"],
    }
)


async def nothing(_: float) -> None:
    return None


def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    with psycopg.connect(url, autocommit=True) as conn:
        return conn.execute(sql).fetchall()


def terminate_sessions(url: str, node: str) -> None:
    """What a dead node or a cut link does to its lock sessions: the server ends them."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (application_name(node),),
        )


async def received_keys(receiver: Receiver, n: int) -> list[str]:
    """The Idempotency-Key of every request, once `n` distinct ones have arrived."""

    async def enough() -> None:
        while len({h["Idempotency-Key"] for h, _ in receiver.requests}) < n:
            receiver.received.clear()
            await receiver.received.wait()

    await asyncio.wait_for(enough(), TIMEOUT_S)
    return [h["Idempotency-Key"] for h, _ in receiver.requests]


def sends_counter() -> Counter:
    return Counter("sent", "sends", ["channel", "outcome"], registry=CollectorRegistry())


def webhook_worker(
    http: httpx.AsyncClient, receiver: Receiver, outbox: Outbox, clock: Clock, sent: Counter
) -> ChannelDelivery:
    """The "hook" channel's delivery to the test's receiver, from `outbox`."""
    return ChannelDelivery(
        "hook",
        WebhookNotifier(http, receiver.url),
        outbox=outbox,
        clock=clock,
        counter=sent,
        after_pass=nothing,
    )


async def test_two_nodes_deliver_every_notification_once_and_in_order(
    receiver: Receiver,
) -> None:
    with pg_database() as url:
        lock = alerts_lock(url, "a")
        async with pg_store(url, "a") as a, pg_store(url, "b") as b, httpx.AsyncClient() as http:
            assert await lock.try_acquire()
            entries = [OutboxEntry("hook", f"k{i}", {"n": i}, f"line{i % 5}") for i in range(60)]
            assert await a.outbox(fenced=lock.fenced).commit([], entries, time.time()) == []
            sent = sends_counter()
            workers = [
                webhook_worker(http, receiver, store.outbox(), SystemClock(), sent)
                for store in (a, b)
            ]
            stopping = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for worker in workers:
                    tg.create_task(worker.run(stopping))
                keys = await received_keys(receiver, 60)
                stopping.set()
            await lock.release()
    assert collections.Counter(keys) == {f"k{i}": 1 for i in range(60)}
    by_line = collections.defaultdict(list)
    for _, body in receiver.requests:
        n = json.loads(body)["n"]
        by_line[n % 5].append(n)
    assert all(ns == sorted(ns) for ns in by_line.values())  # head of line across nodes


async def test_a_node_that_dies_mid_send_leaves_a_lease_another_node_sends_after() -> None:
    with pg_database() as url:
        lock = alerts_lock(url, "a")
        async with pg_store(url, "a") as a, pg_store(url, "b") as b:
            assert await lock.try_acquire()
            assert await a.outbox(fenced=lock.fenced).enqueue("hook", "k1", {}, T0)
            await lock.release()
            [claimed] = await a.outbox(send_timeout_s={"hook": 10.0}).due("hook", T0)
            # a dies here, mid-send: b finds nothing until the lease (10 s + margin) runs out.
            assert await b.outbox().due("hook", T0 + 5) == []
            assert await b.outbox().next_due_at("hook") == T0 + 20
            [again] = await b.outbox().due("hook", T0 + 20)
            assert (again.id, again.idempotency_key) == (claimed.id, "k1")
            assert rows(url, "SELECT claimed_by FROM outbox") == [("b",)]


async def test_a_node_that_stops_gives_back_what_it_claimed_and_did_not_send(
    receiver: Receiver,
) -> None:
    with pg_database() as url:
        lock = alerts_lock(url, "a")
        async with pg_store(url, "a") as a, pg_store(url, "b") as b, httpx.AsyncClient() as http:
            assert await lock.try_acquire()
            entries = [OutboxEntry("hook", f"k{i}", {"n": i}, f"line{i}") for i in range(3)]
            assert await a.outbox(fenced=lock.fenced).commit([], entries, T0) == []
            await lock.release()
            stopping = asyncio.Event()

            def stop_after_the_first(path: str, body: bytes) -> tuple[int, dict[str, str], str]:
                stopping.set()  # a SIGTERM while the first notification is being sent
                return 200, {}, "ok"

            receiver.respond = stop_after_the_first
            outbox = a.outbox(send_timeout_s={"hook": 10.0})
            worker = webhook_worker(http, receiver, outbox, FakeClock(T0), sends_counter())
            assert await worker.deliver_due(T0, stopping) == 1
            # b takes the other two at once, not when a's 10 s claims would have run out.
            left = await b.outbox().due("hook", T0)
    assert [item.idempotency_key for item in left] == ["k1", "k2"]
    assert len(receiver.requests) == 1


async def test_writes_without_the_alert_role_or_after_its_session_died_commit_nothing() -> None:
    fired, _ = step(Alert("errors", (("app", "bot"),)), True, 1.0, T0, timing=Timing())
    entry = OutboxEntry("hook", "fp:firing", {"status": "firing"})
    with pg_database() as url:
        async with pg_store(url) as store:
            holder, standby = alerts_lock(url, "a"), alerts_lock(url, "b")
            assert await holder.try_acquire()
            assert not await standby.try_acquire()
            with pytest.raises(NotLeader):
                await store.outbox(fenced=standby.fenced).commit([fired], [entry], T0)
            terminate_sessions(url, "a")  # the holder's session dies (killed node, cut link)
            with pytest.raises(NotLeader):
                await store.outbox(fenced=holder.fenced).commit([fired], [entry], T0)
            with pytest.raises(NotLeader):  # and it stays refused
                await store.outbox(fenced=holder.fenced).save_alerts([fired])
            await standby.release()
            await holder.release()
        assert rows(url, "SELECT COUNT(*) FROM outbox") == [(0,)]
        assert rows(url, "SELECT COUNT(*) FROM alert_states") == [(0,)]


class Pausable:
    """A leadership loop's sleep that can be held: a node that is stopped (SIGSTOP) does not
    notice it lost its session, nor take the role back."""

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.go.set()

    async def __call__(self, seconds: float) -> None:
        await self.go.wait()
        await asyncio.sleep(seconds)


class Node:
    def __init__(self, name: str, url: str, http: httpx.AsyncClient, receiver: Receiver) -> None:
        self.name, self.url = name, url
        self.paused = Pausable()
        locks = {r: PgRoleLock(url, r.value, node=name, connect_timeout_s=5.0) for r in Role}
        self.leadership = Leadership(
            locks,  # type: ignore[arg-type]
            retry_interval_s=0.02,
            check_interval_s=0.02,
            sleep=self.paused,
        )
        self.store = pg_store(url, name)
        self.registry = CollectorRegistry()
        self.http, self.receiver = http, receiver

    @property
    def gate(self) -> LeaderGate:
        return self.leadership.gate(Role.ALERTS)

    def engine(
        self,
        outbox: Outbox,
        windows: WindowedMetrics,
        clock: Clock,
        eval_interval_s: float = 3600,
        rule: RuleConfig = RULE,
    ) -> AlertEngine:
        self.registry = CollectorRegistry()  # the last engine's
        return AlertEngine(
            [rule],
            {"hook": WebhookNotifier(self.http, self.receiver.url)},
            series=windows.points,
            outbox=outbox,
            clock=clock,
            registry=self.registry,
            eval_interval_s=eval_interval_s,
            leader=self.gate,
        )

    async def leads(self, term: int) -> None:
        gate = self.leadership.gate(Role.ALERTS)
        async with asyncio.timeout(TIMEOUT_S):
            while not (gate.held and gate.term == term):
                await gate.wait_change()

    def dies(self) -> None:
        self.paused.go.clear()
        terminate_sessions(self.url, self.name)


Cluster = tuple[Node, AlertEngine, Node, AlertEngine, WindowedMetrics]


@contextlib.asynccontextmanager
async def cluster(url: str, receiver: Receiver) -> AsyncIterator[Cluster]:
    """Nodes a and b, each with its store and engine, reading the same (cluster-wide) series
    on one fake clock; neither leadership entered yet."""
    clock = FakeClock(T0)
    windows = WindowedMetrics(started_at=T0 - 600, max_window_s=600)
    async with contextlib.AsyncExitStack() as stack:
        http = await stack.enter_async_context(httpx.AsyncClient())
        built = []
        for name in ("a", "b"):
            node = Node(name, url, http, receiver)
            store = await stack.enter_async_context(node.store)
            outbox = store.outbox(fenced=node.leadership.gate(Role.ALERTS).fenced)
            built.append((node, node.engine(outbox, windows, clock)))
        [(a, engine_a), (b, engine_b)] = built
        yield a, engine_a, b, engine_b, windows


def breach(windows: WindowedMetrics) -> None:
    windows.observe(windows.labels_for("bot", "m"), T0, True, 100.0, None, 1, 1, 0.0)


async def failover_and_back(
    a: Node, engine_a: AlertEngine, b: Node, engine_b: AlertEngine, windows: WindowedMetrics
) -> list[Notification]:
    """a leads, sees the breach; a dies, b fires and repeats; b dies, a repeats again."""
    async with a.leadership:
        await a.leads(term=1)
        async with b.leadership:
            breach(windows)
            assert await engine_a.tick(T0) == []  # pending since T0, committed
            assert await engine_a.tick(T0 + 10) == []
            a.dies()
            await b.leads(term=1)
            assert await engine_a.tick(T0 + 20) == []  # a's session is gone: it writes nothing
            assert await engine_b.tick(T0 + 25) == []  # b took over: pending since T0
            [fired] = await engine_b.tick(T0 + 30)  # 30 s after T0, not after the takeover
            assert (fired.kind, fired.alert.active_since) == (NotificationKind.FIRING, T0)
            assert await engine_b.deliveries["hook"].deliver_due(T0 + 30) == 1
            [repeat] = await engine_b.tick(T0 + 90)
            assert repeat.kind is NotificationKind.REPEAT
            assert await engine_b.deliveries["hook"].deliver_due(T0 + 90) == 1
            # Back to a: it reloads b's state (last notified at T0 + 90, one repeat).
            b.dies()
            a.paused.go.set()
            await a.leads(term=2)
            assert await engine_a.tick(T0 + 100) == []
            assert [x.state for x in engine_a.alerts()] == [AlertState.FIRING]
            [again] = await engine_a.tick(T0 + 150)
            assert await engine_a.deliveries["hook"].deliver_due(T0 + 150) == 1
            b.paused.go.set()
            return [fired, repeat, again]


async def test_a_new_leader_fires_once_timed_from_the_stored_active_since(
    receiver: Receiver,
) -> None:
    with pg_database() as url:
        async with cluster(url, receiver) as (a, engine_a, b, engine_b, windows):
            fired, repeat, again = await failover_and_back(a, engine_a, b, engine_b, windows)
    keys = [h["Idempotency-Key"] for h, _ in receiver.requests]
    assert len(keys) == len(set(keys)) == 3
    assert [json.loads(body)["status"] for _, body in receiver.requests] == ["firing"] * 3
    assert keys == [fired.idempotency_key, repeat.idempotency_key, again.idempotency_key]
    assert again.alert.repeats == 2


async def test_a_second_leaders_duplicate_is_refused_and_counted(receiver: Receiver) -> None:
    with pg_database() as url:
        async with cluster(url, receiver) as (a, engine_a, b, engine_b, windows):
            async with a.leadership:
                await a.leads(term=1)
                breach(windows)
                assert await engine_a.tick(T0) == []
                a.dies()
                async with b.leadership:
                    await b.leads(term=1)
                    assert await engine_b.tick(T0 + 5) == []  # b loads the pending alert
                    [pending] = engine_b.alerts()
                    # An overlapping leader got there first with the same state, so the same key.
                    key = Notification(NotificationKind.FIRING, pending, T0 + 30).idempotency_key
                    other = b.store.outbox(fenced=b.leadership.gate(Role.ALERTS).fenced)
                    assert await other.enqueue("hook", key, {"status": "firing", "by": "x"}, T0)
                    [note] = await engine_b.tick(T0 + 30)
                    assert note.idempotency_key == key
                    assert await engine_b.deliveries["hook"].deliver_due(T0 + 30) == 1
                a.paused.go.set()
            assert rows(url, "SELECT COUNT(*) FROM outbox") == [(1,)]
    duplicates = {"channel": "hook", "outcome": "duplicate"}
    assert b.registry.get_sample_value("lookout_notifications_total", duplicates) == 1
    [(_, body)] = receiver.requests
    assert json.loads(body) == {"status": "firing", "by": "x"}


def alerting_node(tmp_path: Path, topic_root: str, node: str, url: str, hook: str) -> Settings:
    return make_settings(
        tmp_path / node,
        topic_root,
        node={"id": f"{node}-{topic_root}"},
        bus={"shared_group": f"g{topic_root}", "client_id": None},
        store={"url": url},
        cluster={
            "heartbeat_interval": "1h",
            "refresh_interval": "1h",
            "leader_retry_interval": 0.05,
        },
        eval_interval=0.05,
        channels={"hook": {"kind": "webhook", "url": hook}},
        rules=[RULE.model_dump(by_alias=True) | {"for": 0}],
    )


async def evaluations(d: Daemon, n: int) -> None:
    assert d.alerts is not None
    for _ in range(n):
        d.alerts.evaluated.clear()
        await asyncio.wait_for(d.alerts.evaluated.wait(), TIMEOUT_S)


async def test_two_daemons_notify_once_and_share_silences(
    tmp_path: Path, topic_root: str, receiver: Receiver
) -> None:
    with pg_database() as url:
        a, b = (Daemon(alerting_node(tmp_path, topic_root, n, url, receiver.url)) for n in "ab")
        async with running(a), running(b):
            for d in (a, b):  # both see the breach: only the one leading alerting notifies
                await post(d, [{"app": "bot", "error": "boom"}] * 3)
            await asyncio.wait_for(receiver.received.wait(), TIMEOUT_S)
            for d in (a, b):
                await evaluations(d, 5)
            leaders = [d for d in (a, b) if "alerts" in d.cluster.leadership.held()]
            assert len(leaders) == 1
            async with api(b) as http:
                added = await http.post(
                    "/api/v1/silences", json={"rule": "errors", "duration": "1h"}
                )
                assert added.status_code in (200, 201)
            async with api(a) as http:
                [listed] = (await http.get("/api/v1/silences")).json()
                [alert] = (await http.get("/api/v1/alerts")).json()
            assert listed["rule"] == "errors" and alert["state"] == "firing"
            for d in (a, b):
                assert sample_value(d, "lookout_outbox_depth", {}) == 0
    assert len(receiver.requests) == 1


def test_the_silence_command_writes_where_a_cluster_reads(tmp_path: Path) -> None:
    def cli(config: Path, *args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "lookout", "silence", *args, "--config", str(config)],
            capture_output=True,
            env={**os.environ, "COLUMNS": "200"},
            timeout=60,
            check=True,
        )
        return proc.stdout.decode()

    with pg_database() as url:
        config = tmp_path / "cli.yaml"
        config.write_text(f"store: {{url: '{url}'}}\nbus: {{shared_group: lookout}}\n")
        silence_id = cli(config, "add", "--match", "app=bot", "--comment", "deploy").split()[1]
        assert rows(url, "SELECT id, comment FROM silences") == [(silence_id, "deploy")]
        assert "deploy" in cli(config, "list")
        assert f"silence {silence_id} expired" in cli(config, "expire", silence_id)


async def test_evaluation_and_delivery_outlive_the_database_going_away(
    receiver: Receiver,
) -> None:
    async def move(url: str, suffix_from: str, suffix_to: str) -> None:
        """Not a blocking call: the lock it waits for may be held by the loop's transactions."""
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            for table in ("outbox", "silences"):
                await conn.execute(f"ALTER TABLE {table}{suffix_from} RENAME TO {table}{suffix_to}")

    with pg_database() as url:
        async with cluster(url, receiver) as (a, _, _, _, windows):
            clock = SystemClock()
            outbox = a.store.outbox(fenced=a.leadership.gate(Role.ALERTS).fenced)
            at_once = RULE.model_copy(update={"for_s": 0.0})
            engine = a.engine(outbox, windows, clock, eval_interval_s=0.05, rule=at_once)
            async with a.leadership, engine.running():
                await a.leads(term=1)
                await move(url, "", "_away")  # what an outage looks like to every query
                windows.observe(
                    windows.labels_for("bot", "m"), clock.now(), True, 1.0, None, 1, 1, 0
                )
                for _ in range(3):
                    engine.evaluated.clear()
                    await asyncio.wait_for(engine.evaluated.wait(), TIMEOUT_S)
                assert receiver.requests == []
                await move(url, "_away", "")
                await asyncio.wait_for(receiver.received.wait(), TIMEOUT_S)
    [(_, body)] = receiver.requests
    assert json.loads(body)["status"] == "firing"
