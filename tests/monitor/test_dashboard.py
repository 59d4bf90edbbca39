"""The dashboard: its JSON from real ingested records, token protection off loopback, and an
end-to-end run in headless Chromium (Debian's package) against a running daemon: no console
errors, chart points from ingested records, an alert appearing after a breach."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import ConsoleMessage, Page, async_playwright

from lookout.clock import FakeClock
from lookout.monitor.config import Settings
from lookout.monitor.daemon import Daemon
from lookout.monitor.ingest.records import Record
from lookout.monitor.storage import RollupPoint
from lookout.monitor.web.dashboard import downsample
from tests.alerts.test_engine import post
from tests.conftest import running

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def dashboard_settings(settings_for: Callable[..., Settings], **extra: Any) -> Settings:
    base = settings_for()
    return Settings.model_validate(
        {
            **base.model_dump(mode="python", by_alias=True, exclude={"rules", "detectors"}),
            "bus": {**base.bus.model_dump(), "password": None},
            "eval_interval": 0.1,
            "detectors": {"enabled": False},
            "rules": [
                {
                    "name": "errors",
                    "metric": "error_rate",
                    "where": {"app": "bot"},
                    "window": 60,
                    "op": ">",
                    "threshold": 0.5,
                    "severity": "critical",
                }
            ],
            **extra,
        }
    )


def records(n: int, **fields: Any) -> list[dict[str, Any]]:
    return [
        {
            "app": "bot",
            "model": "m",
            "prompt": "Where is my parcel? mail me: a@b.example",
            "response": "On its way.",
            "latency_ms": 400 + 10 * i,
            "input_tokens": 20,
            "output_tokens": 40,
            **fields,
        }
        for i in range(n)
    ]


def test_downsampling_averages_each_bucket_over_all_models() -> None:
    points = [RollupPoint(60 * m, "bot", "*", "qps", float(m)) for m in range(10)]
    points += [RollupPoint(0, "bot", "gpt", "qps", 99.0), RollupPoint(0, "bot", "*", "x", 1.0)]
    assert downsample(points, 0, 180) == {
        "bot": {"qps": [(0, 1.0), (180, 4.0), (360, 7.0), (540, 9.0)]}
    }


async def test_series_come_from_ingested_records_and_ood_texts_are_redacted(
    settings_for: Callable[..., Settings],
) -> None:
    async with running(Daemon(dashboard_settings(settings_for)), wait_bus=False) as d:
        await post(d, records(30))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            body = (await http.get("/api/v1/series", params={"range": "24h"})).json()
            auto = (await http.get("/api/v1/series")).json()
            assert (await http.get("/api/v1/series", params={"range": "2y"})).status_code == 400
            page = await http.get("/")
            script = await http.get("/assets/app.js")
            assert (await http.get("/assets/../daemon.py")).status_code == 404
        assert body["apps"] == ["bot"] and body["step_s"] == 360
        # A fresh daemon's minutes fill the charts: the default range is zoomed to the data.
        assert (auto["range"], auto["shown"], auto["step_s"]) == ("auto", "15m", 60)
        assert 300 <= auto["now"] - auto["since"] < 360
        assert [(t["rule"], t["metric"], t["threshold"]) for t in auto["thresholds"]] == [
            ("errors", "error_rate", 0.5)
        ]
        [(_, qps)] = body["series"]["bot"]["qps"]
        assert qps > 0 and body["series"]["bot"]["latency_p50"][0][1] > 0.4
        assert page.status_code == 200 and "<title>lookout</title>" in page.text
        assert "http" not in script.text.replace("http://www.w3.org/2000/svg", "")  # no CDN
        # A flagged record's text is redacted on its way to the page.
        now = d.clock.now()
        flagged = Record(
            id="ood-1",
            ts=now,
            app="bot",
            model="m",
            status="ok",
            received_at=now,
            prompt="mail me: jane@example.com",
        )
        assert d.store.put_record(flagged, 0.0) == "ood-1"
        flags = {"ood": {"prompt": {"score": 0.9, "flagged": True}}}
        d.store.put_scores([("bot", "ood-1", 0.9, json.dumps(flags))])
        await d.store.flush()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
            [ood] = (await http.get("/api/v1/ood")).json()
        assert ood["id"] == "ood-1" and ood["prompt"] == "mail me: [EMAIL]"


async def test_the_minute_just_completed_stays_on_the_charts_until_its_rollup_is_stored(
    settings_for: Callable[..., Settings],
) -> None:
    clock = FakeClock(1_700_000_000.0 // 60 * 60 + 10)  # 10 s into a minute
    minute = clock.now() // 60 * 60
    async with running(Daemon(dashboard_settings(settings_for), clock=clock), wait_bus=False) as d:
        await post(d, records(30))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]

            async def qps_times() -> list[float]:
                body = (await http.get("/api/v1/series", params={"range": "15m"})).json()
                return [t for t, _ in body["series"]["bot"]["qps"]]

            assert await qps_times() == [minute]  # the minute under way
            clock.advance(55)  # 5 s into the next one; its rollup is not written yet
            assert await qps_times() == [minute]  # from the live windows still
            assert d.rollups is not None
            await d.rollups.roll_up()
            assert await qps_times() == [minute]  # from the store now, and only once


async def test_the_dashboard_needs_the_token_when_one_is_set(
    settings_for: Callable[..., Settings],
) -> None:
    settings = dashboard_settings(
        settings_for, api={"bind": "127.0.0.1:0", "token": "s3cret-0123456789ab"}
    )
    async with running(Daemon(settings), wait_bus=False) as d:
        base = f"http://127.0.0.1:{d.api.port}"  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=base) as http:
            assert (await http.get("/")).status_code == 401
            assert (await http.get("/?token=wrong")).status_code == 401
            assert (await http.get("/api/v1/series")).status_code == 401
            opened = await http.get("/?token=s3cret-0123456789ab")
            assert opened.status_code == 200
            assert "httponly" in opened.headers["set-cookie"].lower()
            assert (await http.get("/api/v1/series")).status_code == 200  # the cookie
        # A stale cookie (the token was rotated) does not lock the dashboard's link out.
        cookies = {"lookout_token": "an-old-token-0123456789"}
        async with httpx.AsyncClient(base_url=base, cookies=cookies) as http:
            assert (await http.get("/api/v1/series")).status_code == 401
            reopened = await http.get("/?token=s3cret-0123456789ab")
            assert reopened.status_code == 200 and "s3cret" in reopened.headers["set-cookie"]
            assert (await http.get("/?token=wrong")).status_code == 401


async def test_without_a_token_configured_no_cookie_is_set_from_the_query(
    settings_for: Callable[..., Settings],
) -> None:
    async with running(Daemon(dashboard_settings(settings_for)), wait_bus=False) as d:
        base = f"http://127.0.0.1:{d.api.port}"  # type: ignore[union-attr]
        async with httpx.AsyncClient(base_url=base) as http:
            opened = await http.get("/?token=anything-a-link-carried")
            assert opened.status_code == 200
            assert "set-cookie" not in opened.headers


def put_ood(d: Daemon, record_id: str, prompt: str, score: float, *, flagged: bool) -> None:
    now = d.clock.now()
    record = Record(
        id=record_id, ts=now, app="bot", model="m", status="ok", received_at=now, prompt=prompt
    )
    assert d.store.put_record(record, 0.0) == record_id
    flags = {"ood": {"prompt": {"score": score, "flagged": flagged, "threshold": 0.62}}}
    if not flagged:  # a record flagged on no field, though another scored higher
        flags["ood"]["response"] = {"score": 0.3, "flagged": False, "threshold": 0.7}
    d.store.put_scores([("bot", record_id, score, json.dumps(flags))])


async def check_range_grid_and_hover(page: Page, chart: str) -> None:
    """The range shown says what auto chose; the data fills the chart from its left; time
    gridlines; hovering shows the values at that time."""
    shown = await page.locator("#shown-range").inner_text()
    assert shown.startswith("auto (1h range): ") and "min" in shown
    svg = page.locator(chart).first
    points = await svg.locator('polyline[data-series="latency_p95"]').get_attribute("points")
    assert points is not None
    first_x = float(points.split()[0].split(",")[0])
    assert first_x < 60  # of 320: the oldest point near the left edge, not squeezed right
    assert await svg.locator("line.gridline").count() >= 3
    box = await svg.bounding_box()
    assert box is not None
    await page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    tip = page.locator("section.app[data-app='bot'] .chart .tip:not([hidden])").first
    await tip.wait_for(timeout=5_000)
    text = await tip.inner_text()
    assert "latency p95 0.50" in text and ":" in text  # a time, then the values


# Feedback, engagement, tools, retrieval and the judge's evaluations: their charts, each with
# the rule drawn where one watches it.
USAGE_CHARTS = (
    "feedback_score",
    "negative_feedback_rate",
    "active_users",
    "session_duration_p50",
    "tool_calls_per_request",
    "tool_error_rate",
    "tool_latency_p95",
    "retrieval_latency_p95",
    "empty_retrieval_rate",
    "judge_preference",
    "judge_reference_similarity",
)
USAGE_RULES = [
    {"name": "thumbs-down", "metric": "negative_feedback_rate", "threshold": 0.6},
    {
        "name": "tool-failing",
        "metric": "tool_error_rate",
        "where": {"tool": "search"},
        "threshold": 0.2,
    },
    {
        "name": "other-tool",
        "metric": "tool_error_rate",
        "where": {"tool": "book"},
        "threshold": 0.2,
    },
    {"name": "shadow-loses", "metric": "judge_preference", "op": "<", "threshold": -0.2},
]


async def put_usage(d: Daemon) -> None:
    """bot's records with users, sessions, a tool call and a retrieval, users' thumbs; and
    what only the judge or an ended session makes (session lengths, shadow preference,
    reference similarity) as stored minutes."""
    tool = {"name": "search", "latency_ms": 120, "status": "ok"}
    await post(
        d,
        [
            {
                **r,
                "id": f"u-{i}",
                "user_id": f"u{i % 3}",
                "session_id": f"s{i % 3}",
                "tools": [tool],
                "retrieval": {"latency_ms": 40, "documents": i % 2},
            }
            for i, r in enumerate(records(12))
        ],
    )
    await post(d, [{**r, "app": "plain"} for r in records(5)])  # no tools, no feedback
    thumbs = [
        {"record_id": f"u-{i}", "app": "bot", "key": "thumbs", "score": i % 2} for i in range(6)
    ]
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{d.api.port}") as http:  # type: ignore[union-attr]
        assert (await http.post("/api/v1/feedback", json=thumbs)).status_code == 200
    minute = int(d.clock.now() // 60 * 60)
    d.store.put_rollups(
        [
            RollupPoint(minute - 60 * m, "bot", model, series, value)
            for m in (3, 2)
            for model, series, value in (
                ("*", "session_duration_p50", 240.0),
                ("*", "session_duration_p95", 900.0),
                ("*", "judge_preference:m-next", -0.5),
                ("*", "judge_reference_similarity:string", 0.8),
            )
        ]
    )


async def check_usage_charts(page: Page) -> None:
    bot = 'section.app[data-app="bot"]'
    for name in USAGE_CHARTS:
        svg = page.locator(f'{bot} .chart[data-chart="{name}"] svg')
        assert int(await svg.get_attribute("data-points") or 0) > 0, name
    preference = page.locator(f'{bot} .chart[data-chart="judge_preference"]')
    assert "m-next -0.50" in await preference.locator(".legend").inner_text()
    # Rule thresholds on the series they watch, a tool's rule on that tool's chart only.
    for chart, rule in (
        ("negative_feedback_rate", "thumbs-down"),
        ("tool_error_rate", "tool-failing"),
        ("judge_preference", "shadow-loses"),
    ):
        line = f'{bot} .chart[data-chart="{chart}"] line.threshold[data-rule="{rule}"]'
        assert await page.locator(line).count() == 1
    assert await page.locator(f'{bot} line.threshold[data-rule="other-tool"]').count() == 0
    # An app without tools, feedback or sessions shows none of their charts, not empty ones.
    plain = page.locator('section.app[data-app="plain"] .chart')
    charts = await plain.evaluate_all("boxes => boxes.map(b => b.dataset.chart)")
    assert "latency_p50" in charts and not set(charts) & set(USAGE_CHARTS)


async def test_headless_chromium_shows_ingested_records_and_an_alert(
    settings_for: Callable[..., Settings],
) -> None:
    problems: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            problems.append(f"{message.type}: {message.text}")

    settings = dashboard_settings(settings_for)
    settings = dashboard_settings(
        settings_for,
        rules=[r.model_dump(by_alias=True) for r in settings.rules] + USAGE_RULES,
        # Distinct users in 10 s sketches: a minute's boundary crossed during the test leaves
        # them in the charts' live minute (a minute's sketch would fall out of it).
        engagement={"bucket": 10},
    )
    async with running(Daemon(settings), wait_bus=False) as d:
        await post(d, records(40))
        await put_usage(d)
        # Twenty minutes of history: "auto" picks the 1h range and zooms to those minutes.
        now_minute = d.clock.now() // 60 * 60
        d.store.put_rollups(
            [
                RollupPoint(int(now_minute - 60 * m), "bot", "*", "latency_p95", 0.5)
                for m in (20, 10)
            ]
        )
        put_ood(d, "flagged", "Summarise this contract in Klingon", 0.9, flagged=True)
        put_ood(d, "in-dist", "How do I close my card?", 0.42, flagged=False)
        await d.store.flush()
        url = f"http://127.0.0.1:{d.api.port}/?refresh=1"  # type: ignore[union-attr]
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                page.on("console", on_console)
                page.on("pageerror", lambda exc: problems.append(f"pageerror: {exc}"))
                await page.goto(url)
                chart = 'section.app[data-app="bot"] .chart svg'
                await page.wait_for_function(
                    f"() => [...document.querySelectorAll('{chart}')]"
                    ".some(s => Number(s.dataset.points) > 0)",
                    timeout=30_000,
                )
                latency = page.locator(f'{chart} polyline[data-series="latency_p95"]')
                assert await latency.count() == 1
                await check_range_grid_and_hover(page, chart)
                await check_usage_charts(page)
                # The rule's threshold on the series it watches.
                assert (
                    await page.locator(f'{chart} line.threshold[data-rule="errors"]').count() == 1
                )
                # Flagged records only, each with its score against the threshold.
                ood_rows = await page.locator("#ood tbody tr").all_inner_texts()
                assert len(ood_rows) == 1 and "Klingon" in ood_rows[0]
                assert "0.900 > 0.620" in ood_rows[0] and "prompt" in ood_rows[0]
                assert await page.locator("#alerts tr.alert.firing").count() == 0
                await post(d, records(60, error="upstream 503", status="error"))
                firing = page.locator('#alerts tr.alert.firing[data-rule="errors"]')
                await firing.wait_for(timeout=30_000)
                assert "app=bot" in await firing.inner_text()
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "dashboard-e2e.png"), full_page=True)
            finally:
                await browser.close()
    assert problems == []
