"""The durable outbox: what was enqueued survives a reopen (and kill -9) until delivered."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

from lookout.alerts.outbox import OutboxStatus, SqliteOutbox
from lookout.backoff import backoff_s

T0 = 1_700_000_000.0


async def test_enqueue_is_idempotent_and_survives_reopening(tmp_path: Path) -> None:
    db = tmp_path / "lookout.db"
    async with SqliteOutbox(db) as outbox:
        await outbox.enqueue("pager-hook", "fp:firing:1", {"status": "firing"}, T0)
        await outbox.enqueue("pager-hook", "fp:firing:1", {"status": "firing"}, T0)
        await outbox.enqueue("oncall-slack", "fp:firing:1", {"status": "firing"}, T0)
    async with SqliteOutbox(db) as outbox:
        due = await outbox.due(T0)
        assert [(i.channel, i.payload) for i in due] == [
            ("pager-hook", {"status": "firing"}), ("oncall-slack", {"status": "firing"}),
        ]  # fmt: skip
        await outbox.retry_at(due[0].id, T0 + 30, "500")
        await outbox.finish(due[1].id, OutboxStatus.DELIVERED, T0 + 1)
        assert await outbox.due(T0 + 10) == []
        assert await outbox.next_due_at() == T0 + 30
        [again] = await outbox.due(T0 + 30)
        assert again.attempts == 1
        assert await outbox.depth() == (1, T0)
        assert await outbox.expire(older_than=T0 + 1, now=T0 + 3600) == 1
        assert await outbox.depth() == (0, None)


def test_an_enqueue_survives_kill_9(tmp_path: Path) -> None:
    db = tmp_path / "lookout.db"
    script = f"""
import asyncio, os, signal
from pathlib import Path
from lookout.alerts.outbox import SqliteOutbox
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
            return [i.idempotency_key for i in await outbox.due(2.0)]

    import asyncio

    assert asyncio.run(check()) == ["k1"]


def test_backoff_is_capped_jittered_and_honours_retry_after() -> None:
    rng = random.Random(1)
    delays = [backoff_s(n, rng, base_s=1.0, cap_s=300.0) for n in range(12)]
    assert all(0.5 * min(300, 2**n) <= d <= min(300, 2**n) for n, d in enumerate(delays))
    assert max(delays) <= 300
    assert backoff_s(0, rng, base_s=1.0, cap_s=300.0, retry_after_s=42) == 42


async def test_alert_states_round_trip(tmp_path: Path) -> None:
    from lookout.alerts.state import Alert, AlertState, Timing, step

    fired, _ = step(Alert("r", (("app", "bot"),)), True, 3.5, T0, timing=Timing())
    async with SqliteOutbox(tmp_path / "a.db") as outbox:
        await outbox.save_alerts([fired])
        await outbox.save_alerts([fired])
    async with SqliteOutbox(tmp_path / "a.db") as outbox:
        [loaded] = await outbox.load_alerts()
    assert loaded == fired and loaded.state is AlertState.FIRING
