"""The durable outbox: what was enqueued survives a reopen (and kill -9) until delivered."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from lookout.alerts.outbox import OutboxStatus
from lookout.backoff import backoff_s
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox
from tests.alerts.outboxes import opened

T0 = 1_700_000_000.0


async def test_enqueue_is_idempotent_and_survives_reopening(outbox_at: str) -> None:
    async with opened(outbox_at) as outbox:
        assert await outbox.enqueue("pager-hook", "fp:firing:1", {"status": "firing"}, T0)
        assert not await outbox.enqueue("pager-hook", "fp:firing:1", {"status": "firing"}, T0)
        assert await outbox.enqueue("oncall-slack", "fp:firing:1", {"status": "firing"}, T0)
    async with opened(outbox_at) as outbox:
        [hook] = await outbox.due("pager-hook", T0)
        [slack] = await outbox.due("oncall-slack", T0)
        assert hook.payload == slack.payload == {"status": "firing"}
        await outbox.retry_at(hook.id, T0 + 30, "500")
        await outbox.finish(slack.id, OutboxStatus.DELIVERED, T0 + 1)
        assert await outbox.due("pager-hook", T0 + 10) == []
        assert await outbox.next_due_at("pager-hook") == T0 + 30
        assert await outbox.next_due_at("oncall-slack") is None
        [again] = await outbox.due("pager-hook", T0 + 30)
        assert again.attempts == 1
        assert await outbox.depth() == (1, T0)
        assert await outbox.expire("oncall-slack", older_than=T0 + 1, now=T0 + 3600) == 0
        assert await outbox.expire("pager-hook", older_than=T0 + 1, now=T0 + 3600) == 1
        assert await outbox.depth() == (0, None)


async def test_a_resolved_never_overtakes_the_firing_it_follows(outbox_at: str) -> None:
    async with opened(outbox_at) as outbox:
        await outbox.enqueue("hook", "a:firing", {"status": "firing"}, T0, ordering_key="a")
        await outbox.enqueue("hook", "b:firing", {"status": "firing"}, T0, ordering_key="b")
        await outbox.enqueue("hook", "a:resolved", {"status": "resolved"}, T0 + 5, ordering_key="a")
        due = await outbox.due("hook", T0 + 5)
        assert [i.idempotency_key for i in due] == ["a:firing", "b:firing"]
        # The firing one waits to retry: its resolution waits behind it, other lines do not.
        await outbox.retry_at(due[0].id, T0 + 60, "connect refused")
        await outbox.finish(due[1].id, OutboxStatus.DELIVERED, T0 + 5)
        assert await outbox.due("hook", T0 + 10) == []
        assert await outbox.next_due_at("hook") == T0 + 60
        [first] = await outbox.due("hook", T0 + 60)
        assert first.idempotency_key == "a:firing"
        await outbox.finish(first.id, OutboxStatus.DELIVERED, T0 + 60)
        [then] = await outbox.due("hook", T0 + 60)
        assert then.idempotency_key == "a:resolved"


async def test_an_outbox_from_an_earlier_version_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as old:
        old.execute(
            "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, channel TEXT NOT NULL,"
            " idempotency_key TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL,"
            " next_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
            " status TEXT NOT NULL DEFAULT 'pending', last_error TEXT, done_at REAL,"
            " UNIQUE (channel, idempotency_key))"
        )
        old.execute(
            "INSERT INTO outbox (channel, idempotency_key, payload, created_at, next_at)"
            " VALUES ('hook', 'k0', '{}', 1.0, 1.0)"
        )
    async with SqliteOutbox(db) as outbox:
        await outbox.enqueue("hook", "k1", {}, 2.0, ordering_key="x")
        assert [i.idempotency_key for i in await outbox.due("hook", 3.0)] == ["k0", "k1"]


async def test_failing_notifications_of_a_channel_no_longer_configured(outbox_at: str) -> None:
    async with opened(outbox_at) as outbox:
        await outbox.enqueue("gone", "k1", {}, T0)
        await outbox.enqueue("hook", "k2", {}, T0)
        assert await outbox.fail_unknown_channels(["hook"], T0) == 1
        assert await outbox.depth() == (1, T0)


def test_an_enqueue_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "lookout.db"
    script = f"""
import asyncio, os, signal
from pathlib import Path
from lookout.monitor.storage.sqlite_outbox import SqliteOutbox
async def main():
    outbox = SqliteOutbox(Path({str(db)!r}))
    await outbox.__aenter__()
    await outbox.enqueue("hook", "k1", {{"n": 1}}, 1.0)
    os.kill(os.getpid(), signal.SIGKILL)
asyncio.run(main())
"""
    proc = subprocess.run([sys.executable, "-c", script], check=False)
    assert proc.returncode == -9

    async def check() -> list[str]:
        async with SqliteOutbox(db) as outbox:
            return [i.idempotency_key for i in await outbox.due("hook", 2.0)]

    import asyncio

    assert asyncio.run(check()) == ["k1"]


def test_backoff_is_capped_jittered_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_s(n, rng, base_s=1.0, cap_s=300.0) for n in range(12)]
    assert all(0.5 * min(300, 2**n) <= d <= min(300, 2**n) for n, d in enumerate(delays))
    assert max(delays) <= 300
    assert backoff_s(0, rng, base_s=1.0, cap_s=300.0, retry_after_s=42) == 42


async def test_alert_states_round_trip(outbox_at: str) -> None:
    from lookout.alerts.state import Alert, AlertState, Timing, step

    fired, _ = step(Alert("r", (("app", "bot"),)), True, 3.5, T0, timing=Timing())
    async with opened(outbox_at) as outbox:
        await outbox.save_alerts([fired])
        await outbox.save_alerts([fired])
    async with opened(outbox_at) as outbox:
        [loaded] = await outbox.load_alerts()
    assert loaded == fired and loaded.state is AlertState.FIRING


async def test_silences_and_slack_threads_round_trip(outbox_at: str) -> None:
    from lookout.alerts.outbox import Silence

    async with opened(outbox_at) as outbox:
        await outbox.add_silence(Silence("s1", "errors", {"app": "bot"}, T0, T0 + 60, "deploy"))
        await outbox.add_silence(Silence("s2", None, {"app": "shop"}, T0, T0 + 30))
        await outbox.remember_message("slack", "1700.01", ["fp1", "fp2"], T0)
    async with opened(outbox_at) as outbox:
        assert [x.id for x in await outbox.silences(active_at=T0 + 40)] == ["s1"]
        assert await outbox.expire_silence("s1", T0 + 41)
        assert not await outbox.expire_silence("s1", T0 + 42)
        assert await outbox.silences(active_at=T0 + 42) == []
        [s2, s1] = await outbox.silences()
        assert (s1.matchers, s1.comment, s2.rule) == ({"app": "bot"}, "deploy", None)
        assert await outbox.message_ids("slack", ["fp1", "fp3"]) == {"fp1": "1700.01"}
