"""`lookout demo`: the daemon on an embedded broker, a local webhook receiver that prints what
it gets, and traffic for two apps with incidents on a timeline, so a newcomer sees alerts fire
and resolve within five minutes, on the dashboard and in the terminal.

`speed` compresses the timeline and every rule window with it (tests run it at speed 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from aiohttp import web

from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.demo.history import seed_history
from lookout.monitor.demo.judge import demo_judge
from lookout.monitor.demo.rules import HOOK, demo_rules
from lookout.monitor.demo.traffic import (
    PROFILES,
    TIMELINE,
    TIMELINE_S,
    Incident,
    IncidentKind,
    Traffic,
    active,
)

TICK_S = 0.25


@dataclass(frozen=True, slots=True)
class DemoOptions:
    speed: float = 1.0
    once: bool = False  # stop when the timeline is over and its alerts have resolved
    incidents: tuple[IncidentKind, ...] = tuple(IncidentKind)
    api_port: int = 8321  # 0: any free port
    state_dir: Path | None = None  # None: a temporary directory, removed at the end
    records_per_s: float = 8.0  # per app


@dataclass(frozen=True, slots=True)
class DemoEvent:
    elapsed_s: float
    status: str  # firing, resolved
    rule: str
    app: str
    summary: str


def free_port(preferred: int = 0) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def demo_settings(
    opts: DemoOptions,
    *,
    mqtt_port: int,
    api_port: int,
    hook_url: str,
    judge_url: str,
    state_dir: Path,
) -> Settings:
    def s(seconds: float) -> float:
        return seconds / opts.speed

    return Settings.model_validate(
        {
            "bus": {
                "url": f"mqtt://127.0.0.1:{mqtt_port}",
                "embedded": True,
                "client_id": "lookout-demo",
                "persistent_session": False,
            },
            "store": {"url": f"sqlite:///{state_dir}/lookout.db", "record_sample_rate": 0.5},
            "api": {"bind": f"127.0.0.1:{api_port}"},
            "eval_interval": max(0.2, s(2)),
            "metrics": {"bucket_s": s(5)},
            # A user comes back about once a minute: sessions split on a 90 s gap, so the
            # session charts fill within the demo (30 min, the default, would take hours).
            "engagement": {"bucket": s(10), "session_idle_gap": s(90)},
            "detectors": {
                "fields": ["prompt", "response"],
                "reference": {"auto_size": 200},
                "drift": {"window": 50, "ert": 5000},
                "ood": {"fpr": 0.02},
            },
            "judge": {
                "enabled": True,
                "model": "openai:demo-judge",
                "base_url": judge_url,
                "api_key": "demo",
                "schedule": {"interval": max(3.0, s(30))},
                "sample_size": 10,
                "criteria": ["helpfulness"],
                "lookback": max(6.0, s(60)),
            },
            "channels": {HOOK: {"kind": "webhook", "url": hook_url, "max_age": "10m"}},
            "rules": demo_rules(opts.speed),
        }
    )


class Demo:
    def __init__(self, opts: DemoOptions, out: Callable[[str], None] = print) -> None:
        self.opts = opts
        self._out = out
        self.events: asyncio.Queue[DemoEvent] = asyncio.Queue(maxsize=1000)  # for tests
        self.dashboard_url = ""
        self._t0 = time.monotonic()
        self._timeline = tuple(i for i in TIMELINE if i.kind in opts.incidents)

    def _elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _say(self, text: str) -> None:
        minutes, seconds = divmod(int(self._elapsed()), 60)
        self._out(f"[{minutes:02d}:{seconds:02d}] {text}")

    @contextlib.asynccontextmanager
    async def _receiver(self) -> AsyncIterator[str]:
        """A local webhook receiver: prints each notification and queues it for tests."""

        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            for alert in body.get("alerts", []):
                labels, status = alert.get("labels", {}), alert.get("status", "")
                summary = alert.get("annotations", {}).get("summary", "")
                mark = "FIRING  " if status == "firing" else "RESOLVED"
                self._say(f"webhook received: {mark} {labels.get('alertname')}: {summary}")
                event = DemoEvent(
                    self._elapsed(),
                    status,
                    labels.get("alertname", ""),
                    labels.get("app", ""),
                    summary,
                )
                with contextlib.suppress(asyncio.QueueFull):  # nobody reads them but tests
                    self.events.put_nowait(event)
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            yield f"http://127.0.0.1:{port}/hook"
        finally:
            await runner.cleanup()

    async def run(self, stop: asyncio.Event) -> None:
        opts = self.opts
        with contextlib.ExitStack() as files:
            state = opts.state_dir or Path(files.enter_context(tempfile.TemporaryDirectory()))
            async with self._receiver() as hook_url, demo_judge(free_port()) as judge_url:
                settings = demo_settings(
                    opts,
                    mqtt_port=free_port(),
                    api_port=free_port(opts.api_port),
                    hook_url=hook_url,
                    judge_url=judge_url,
                    state_dir=state,
                )
                await seed_history(settings, time.time())
                daemon = Daemon(settings)
                halt = asyncio.Event()
                async with asyncio.TaskGroup() as tg:
                    running = tg.create_task(daemon.run(halt), name="demo-daemon")
                    ready = asyncio.ensure_future(daemon.ready.wait())
                    await asyncio.wait([ready, running], return_when=asyncio.FIRST_COMPLETED)
                    if running.done():
                        ready.cancel()
                        return
                    assert daemon.api is not None
                    self.dashboard_url = f"http://127.0.0.1:{daemon.api.port}/"
                    self._banner(state)
                    traffic = tg.create_task(self._traffic(settings, stop), name="demo-traffic")
                    await stop.wait()
                    traffic.cancel()
                    halt.set()

    def _banner(self, state: Path) -> None:
        self._say(f"lookout demo: dashboard at {self.dashboard_url}  (Ctrl-C to stop)")
        self._say(f"state in {state}; two apps publish records on an embedded MQTT broker")
        self._say(
            "a local demo judge (a rule of thumb behind the OpenAI API) grades 10 records "
            f"per app every {max(3.0, 30 / self.opts.speed):g} s"
        )
        for i in self._timeline:
            at = i.start_s / self.opts.speed
            self._say(f"  at {int(at) // 60:02d}:{int(at) % 60:02d}  {i.what} -> rule {i.rule}")

    async def _traffic(self, settings: Settings, stop: asyncio.Event) -> None:
        opts, gen = self.opts, Traffic()
        port = int(settings.bus.url.rsplit(":", 1)[1])
        per_tick = opts.records_per_s * min(opts.speed, 4.0) * TICK_S
        owed = dict.fromkeys(PROFILES, 0.0)
        announced: set[tuple[Incident, str]] = set()
        over = False
        start = time.monotonic()
        async with aiomqtt.Client("127.0.0.1", port, identifier="lookout-demo-traffic") as client:
            while True:
                timeline_s = (time.monotonic() - start) * opts.speed
                for app in PROFILES:
                    incidents = active(self._timeline, app, timeline_s)
                    self._announce(incidents, timeline_s, announced)
                    owed[app] += per_tick
                    kinds = frozenset(i.kind for i in incidents)
                    batch = [gen.record(app, time.time(), kinds) for _ in range(int(owed[app]))]
                    owed[app] -= len(batch)
                    batch += [s for r in list(batch) if (s := gen.shadow(r, kinds)) is not None]
                    if batch:
                        await client.publish(f"llm/records/{app}", json.dumps(batch), qos=1)
                    if thumbs := [e for r in batch if (e := gen.feedback(r, kinds)) is not None]:
                        await client.publish(f"llm/feedback/{app}", json.dumps(thumbs), qos=1)
                if timeline_s > self._end_s() and not over:
                    over = True
                    if opts.once:
                        self._say("the timeline is over")
                        stop.set()
                        return
                    self._say("the timeline is over; normal traffic goes on (Ctrl-C to stop)")
                await asyncio.sleep(TICK_S)

    def _end_s(self) -> float:
        """Timeline time after which every incident's alert has had time to resolve."""
        last = max((i.start_s + i.duration_s for i in self._timeline), default=0.0)
        return min(TIMELINE_S, last + 45.0)

    def _announce(
        self,
        incidents: tuple[Incident, ...],
        timeline_s: float,
        announced: set[tuple[Incident, str]],
    ) -> None:
        for i in self._timeline:
            ended = timeline_s >= i.start_s + i.duration_s
            if i in incidents and (i, "start") not in announced:
                announced.add((i, "start"))
                self._say(f"incident: {i.what}")
            elif ended and (i, "start") in announced and (i, "end") not in announced:
                announced.add((i, "end"))
                self._say(f"incident over: {i.over or f'{i.app} is back to normal'}")
