"""The API routes that read or feed the running services: status, record ingest and lookup,
rejected samples, alerts and silences, and the dashboard's. Built once every service they
serve exists; until then the API server answers these paths 503 (docs/api.md)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from aiohttp import web

from lookout.alerts.outbox import SqliteOutbox, silence_from_request
from lookout.clock import Clock
from lookout.monitor.ingest.pipeline import Pipeline
from lookout.monitor.ingest.records import RejectReason
from lookout.monitor.storage import Store
from lookout.monitor.web.dashboard import Dashboard
from lookout.monitor.web.views import ApiViews, dump_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
COMMIT_WAIT_S = 10.0  # longest a POST waits for its records' commit before answering 503
RETRY_AFTER_S = 1


@dataclass(frozen=True)
class RouteDeps:
    pipeline: Pipeline
    store: Store
    clock: Clock
    views: ApiViews
    dashboard: Dashboard
    outbox: SqliteOutbox | None  # None without alert rules


class ApiRoutes:
    def __init__(self, deps: RouteDeps) -> None:
        self._deps = deps
        self.dashboard = deps.dashboard

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(dump_json(self._deps.views.status()))

    async def alerts(self, request: web.Request) -> web.Response:
        return web.json_response(dump_json(self._deps.views.alerts_listed()))

    def _silences_outbox(self) -> SqliteOutbox:
        if self._deps.outbox is None:
            raise web.HTTPConflict(
                text=json.dumps({"error": "no alert rules are configured"}),
                content_type="application/json",
            )
        return self._deps.outbox

    async def list_silences(self, request: web.Request) -> web.Response:
        silences = await self._silences_outbox().silences()
        return web.json_response([asdict(x) for x in silences])

    async def add_silence(self, request: web.Request) -> web.Response:
        outbox = self._silences_outbox()
        try:
            silence = silence_from_request(await request.json(), self._deps.clock.now())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        await outbox.add_silence(silence)
        return web.json_response(asdict(silence), status=201)

    async def expire_silence(self, request: web.Request) -> web.Response:
        outbox = self._silences_outbox()
        now = self._deps.clock.now()
        if not await outbox.expire_silence(request.match_info["silence_id"], now):
            return web.json_response({"error": "no such active silence"}, status=404)
        return web.json_response({"expired": True})

    async def post_records(self, request: web.Request) -> web.Response:
        """Answered once the records are committed: a 2xx means they are durable. Under
        back-pressure (or a store that cannot commit), 503 with Retry-After; a retried batch is
        de-duplicated by its records' ids."""
        pipeline = self._deps.pipeline
        if not pipeline.has_room():
            return _busy("the store is behind; retry")
        payload = await request.read()
        result = pipeline.process_payload(payload, None, "http", self._deps.clock.now())
        try:
            await asyncio.wait_for(asyncio.shield(pipeline.committed()), COMMIT_WAIT_S)
        except TimeoutError:
            return _busy("not committed yet; retry (records with ids are counted once)")
        body = {
            "accepted": result.accepted,
            "duplicates": result.duplicates,
            "rejected": [{"reason": r, "detail": d} for r, d in result.rejected],
        }
        status = 200
        if result.rejected and not (result.accepted or result.duplicates):
            too_large = result.rejected[0][0] == RejectReason.TOO_LARGE.value
            status = 413 if too_large else 400
        return web.json_response(body, status=status)

    async def get_record(self, request: web.Request) -> web.Response:
        record = await self._deps.store.get_record(request.match_info["record_id"])
        if record is None:
            return web.json_response(
                {"error": "no such record (only a sample of ok records is kept)"}, status=404
            )
        for key in ("metadata", "flags"):
            if record.get(key):
                record[key] = json.loads(record[key])
        record["verdicts"] = dump_json(await self._deps.views.verdicts(record["id"]))
        return web.json_response(record)

    async def rejected(self, request: web.Request) -> web.Response:
        try:
            limit = min(int(request.query.get("limit", "100")), 1000)
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        samples = await self._deps.store.rejected(limit)
        return web.json_response(
            [
                {
                    "at": s.at,
                    "source": s.source,
                    "reason": s.reason,
                    "detail": s.detail,
                    "sample": s.sample.decode("utf-8", errors="replace"),
                }
                for s in samples
            ]
        )


def _busy(reason: str) -> web.Response:
    return web.json_response(
        {"error": reason}, status=503, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


Pick = Callable[[ApiRoutes], Handler]
# (method, path, the handler once the routes exist): registered when the server starts, served
# from when the daemon hands the routes over.
SERVICE_ROUTES: tuple[tuple[str, str, Pick], ...] = (
    ("GET", "/api/v1/status", lambda r: r.status),
    ("POST", "/api/v1/records", lambda r: r.post_records),
    ("GET", "/api/v1/records/{record_id}", lambda r: r.get_record),
    ("GET", "/api/v1/rejected", lambda r: r.rejected),
    ("GET", "/api/v1/alerts", lambda r: r.alerts),
    ("GET", "/api/v1/silences", lambda r: r.list_silences),
    ("POST", "/api/v1/silences", lambda r: r.add_silence),
    ("DELETE", "/api/v1/silences/{silence_id}", lambda r: r.expire_silence),
    ("GET", "/", lambda r: r.dashboard.page),
    ("GET", "/assets/{name}", lambda r: r.dashboard.asset),
    ("GET", "/api/v1/series", lambda r: r.dashboard.series),
    ("GET", "/api/v1/ood", lambda r: r.dashboard.ood),
    ("GET", "/api/v1/judge/failures", lambda r: r.dashboard.judge_failures),
)
