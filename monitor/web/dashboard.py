"""The dashboard: a page and its assets served by the daemon itself (the box may be offline, so
no CDN), and the JSON it reads: per-app series from the store's per-minute rollups plus the
live minute, recent alerts, the latest out-of-distribution records and judge failures with
their text redacted.

Off loopback the API token guards it like the API: open `/?token=...` once and the page keeps
the token in an HttpOnly, SameSite=Strict cookie for its own requests.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from lookout.monitor.metrics.windows import ALL
from lookout.monitor.storage import RollupPoint
from lookout.monitor.web.guards import served_over_https
from lookout.monitor.web.params import query_int

if TYPE_CHECKING:
    from lookout.alerts.config import RuleConfig
    from lookout.clock import Clock
    from lookout.monitor.storage import Store
    from lookout.redaction import Redactor

RANGES_S = {"15m": 900, "1h": 3600, "24h": 86_400, "7d": 7 * 86_400}
AUTO = "auto"  # the default: the shortest range that holds all the data, zoomed to the data
MIN_SPAN_S = 300.0  # auto zooms in no further: a fresh daemon's first minutes
_CACHED_QUERIES = 16  # store queries kept: the ranges auto tries and the ones asked for
MAX_POINTS = 240  # per series and chart: enough for the width of a chart
TEXT_CHARS = 400
_ASSETS = {"app.js": "text/javascript", "style.css": "text/css"}
# Shown per app; rollup names of labelled series carry the label: drift_score:prompt.
CHART_SERIES = (
    "latency_p50",
    "latency_p95",
    "latency_p99",
    "qps",
    "tps",
    "error_rate",
    "cost_per_hour",
    "drift_score",
    "ood_rate",
    "judge_pass_rate",
    "feedback_score",
    "negative_feedback_rate",
    "active_users",
    "active_sessions",
    "session_duration_p50",
    "session_duration_p95",
    "tool_calls_per_request",
    "tool_error_rate",
    "tool_latency_p95",
    "retrieval_latency_p95",
    "empty_retrieval_rate",
    "judge_preference",
    "judge_reference_similarity",
)


@dataclass(frozen=True)
class DashboardDeps:
    store: Store
    clock: Clock
    redactor: Redactor
    # (now, since): the minutes from `since` to now from the live windows
    live: Callable[[float, float], list[RollupPoint]]
    stored_minute: Callable[[], float]  # the first minute not known to be in the store
    judge_failures: Callable[[int], Awaitable[list[dict[str, Any]]]]
    # (since, now, step_s) -> app -> series -> [(time, low, high)]: anomaly rules' bands
    bands: Callable[[float, float, float], dict[str, dict[str, list[Any]]]] | None = None
    rules: Sequence[RuleConfig] = ()  # their thresholds are drawn on the charts of their series


def _asset(name: str) -> bytes:
    return (resources.files("lookout.monitor.web") / "dashboard_assets" / name).read_bytes()


def downsample(
    points: list[RollupPoint], since: float, step_s: float
) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """app -> series -> [(time, mean value)] in buckets of `step_s`, over all models."""
    sums: dict[tuple[str, str, int], list[float]] = {}
    for p in points:
        if p.model != ALL or p.minute < since or p.series.split(":")[0] not in CHART_SERIES:
            continue
        bucket = int((p.minute - since) // step_s)
        acc = sums.setdefault((p.app, p.series, bucket), [0.0, 0.0])
        acc[0] += p.value
        acc[1] += 1
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for (app, series, bucket), (total, n) in sorted(sums.items()):
        out.setdefault(app, {}).setdefault(series, []).append(
            (since + bucket * step_s, round(total / n, 6))
        )
    return out


class Dashboard:
    def __init__(self, deps: DashboardDeps) -> None:
        self._deps = deps
        self._index = _asset("index.html")
        self._assets = {name: _asset(name) for name in _ASSETS}
        self._cache: dict[tuple[str, float], tuple[float, list[RollupPoint]]] = {}

    async def page(self, request: web.Request) -> web.Response:
        response = web.Response(body=self._index, content_type="text/html", charset="utf-8")
        token = request.query.get("token")
        if token and request.get("token_from_query"):  # a configured token that matched
            response.set_cookie(
                "lookout_token",
                token,
                httponly=True,
                samesite="Strict",
                path="/",
                secure=served_over_https(request),
            )
        return response

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._assets:
            raise web.HTTPNotFound()
        return web.Response(
            body=self._assets[name],
            content_type=_ASSETS[name],
            headers={"Cache-Control": "no-cache"},
        )

    async def series(self, request: web.Request) -> web.Response:
        name = request.query.get("range", AUTO)
        if name != AUTO and name not in RANGES_S:
            return web.json_response(
                {"error": f"range is one of {AUTO}, {', '.join(RANGES_S)}"}, status=400
            )
        now = self._deps.clock.now()
        chosen, since = (await self._auto(now)) if name == AUTO else (name, now - RANGES_S[name])
        since = since // 60 * 60
        step_s = max(60.0, (RANGES_S[name] if name != AUTO else now - since) / MAX_POINTS)
        return web.json_response(
            {
                "range": name,
                "shown": chosen,  # the range auto chose, or the one asked for
                "since": since,
                "now": now,
                "step_s": step_s,
                **await self._series(chosen, since, step_s, now),
                "bands": self._deps.bands(since, now, step_s) if self._deps.bands else {},
                "thresholds": [
                    {
                        "rule": r.name,
                        "metric": r.metric,
                        "where": r.where,
                        "op": r.op,
                        "threshold": r.threshold,
                    }
                    for r in self._deps.rules
                    if r.threshold is not None  # anomaly rules draw their band instead
                ],
            }
        )

    async def _series(self, name: str, since: float, step_s: float, now: float) -> dict[str, Any]:
        stored = self._deps.stored_minute()
        series = downsample(await self._stored(name, since, step_s, stored), since, step_s)
        # The minutes not in the store yet (the one under way, and the one just completed
        # until its rollup is written) are points of their own at the end, from the live
        # windows, not averaged into a bucket of stored means.
        first_live = max(stored, since)
        live = self._deps.live(now, first_live)
        for app, named in downsample(live, first_live, 60.0).items():
            for key, values in named.items():
                series.setdefault(app, {}).setdefault(key, []).extend(values)
        return {"apps": sorted(a for a in series if a != ALL), "series": series}

    async def _auto(self, now: float) -> tuple[str, float]:
        """The shortest range that holds the oldest data point, and a start zoomed to it (at
        least `MIN_SPAN_S` back), so a fresh daemon's minutes fill the charts."""

        async def oldest(name: str) -> float | None:
            since = (now - RANGES_S[name]) // 60 * 60
            body = await self._series(name, since, max(60.0, RANGES_S[name] / MAX_POINTS), now)
            series = body["series"].values()
            return min((t for named in series for p in named.values() for t, _ in p), default=None)

        by_length = sorted(RANGES_S, key=RANGES_S.__getitem__)
        # The longest range's buckets start at or before the oldest point: a range from there
        # holds it all; its own finer buckets then say where the data starts.
        first = await oldest(by_length[-1])
        if first is None:
            return by_length[0], now - MIN_SPAN_S
        shown = next(n for n in by_length if now - RANGES_S[n] <= first or n == by_length[-1])
        first = min(await oldest(shown) or first, now - MIN_SPAN_S)
        shown = next(n for n in by_length if now - RANGES_S[n] <= first or n == by_length[-1])
        return shown, max(first, now - RANGES_S[shown])

    async def _stored(
        self, name: str, since: float, step_s: float, until: float
    ) -> list[RollupPoint]:
        """The store's part, computed once per range, start and rollup (the live minutes are
        added fresh on every request)."""
        cached = self._cache.get((name, since))
        if cached is not None and cached[0] == until:
            return list(cached[1])
        points = await self._deps.store.rollup_means(since, step_s, until)
        if len(self._cache) >= _CACHED_QUERIES:
            self._cache.clear()
        self._cache[(name, since)] = (until, points)
        return list(points)

    def _redact(self, text: str | None) -> str | None:
        if text is None:
            return None
        return self._deps.redactor.redact_cut(text, TEXT_CHARS, "…").text

    async def ood(self, request: web.Request) -> web.Response:
        """The latest records flagged out of distribution: for each, the flagged fields with
        their score against the threshold, and their text redacted."""
        rows = await self._deps.store.recent_flagged(_limit(request))
        out = []
        for r in rows:
            fields = flagged_fields(r.get("flags"))
            if not fields:
                continue
            out.append(
                {
                    "id": r["id"],
                    "ts": r["ts"],
                    "app": r["app"],
                    "model": r["model"],
                    "ood_score": r["ood_score"],
                    "flagged": fields,
                    "prompt": self._redact(r["prompt"]),
                    "response": self._redact(r["response"]),
                }
            )
        return web.json_response(out)

    async def judge_failures(self, request: web.Request) -> web.Response:
        rows = await self._deps.judge_failures(_limit(request))
        for r in rows:
            for key in ("prompt", "response", "reasoning"):
                r[key] = self._redact(r[key])
        return web.json_response(rows)


def flagged_fields(flags: str | None) -> list[dict[str, Any]]:
    """[{field, score, threshold}] of the fields the OOD detector flagged, from a record's
    flags (threshold None for records scored before it was kept)."""
    try:
        ood = json.loads(flags or "{}").get("ood", {})
    except (ValueError, AttributeError):
        return []
    return [
        {"field": field, "score": f.get("score"), "threshold": f.get("threshold")}
        for field, f in sorted(ood.items())
        if isinstance(f, dict) and f.get("flagged")
    ]


def _limit(request: web.Request) -> int:
    return query_int(request, "limit", 20, 1, 200)
