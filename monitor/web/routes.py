"""The API routes that read or feed the running services: status, record ingest and lookup,
rejected samples, alerts and silences, and the dashboard's. Built once every service they
serve exists; until then the API server answers these paths 503 (docs/api.md)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

from aiohttp import web

from lookout.alerts.outbox import Outbox, silence_from_request
from lookout.clock import Clock
from lookout.monitor.cluster.views import ClusterResponse
from lookout.monitor.ingest.feedback_ingest import FeedbackIngest
from lookout.monitor.ingest.pipeline import IngestResult, Pipeline
from lookout.monitor.ingest.records import Rejection, RejectReason
from lookout.monitor.storage import Store
from lookout.monitor.web.dashboard import Dashboard
from lookout.monitor.web.params import query_int
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
    outbox: Outbox | None  # None without alert rules
    max_body_bytes: int  # of a POST /api/v1/records body; larger ones are rejected unread
    silence_max_s: float
    feedback: FeedbackIngest | None = None
    cluster: Callable[[], Awaitable[ClusterResponse]] | None = None


class ApiRoutes:
    def __init__(self, deps: RouteDeps) -> None:
        self._deps = deps
        self.dashboard = deps.dashboard

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(dump_json(self._deps.views.status()))

    async def cluster(self, request: web.Request) -> web.Response:
        if self._deps.cluster is None:
            return web.json_response({"error": "no cluster view"}, status=404)
        return web.json_response(dump_json(await self._deps.cluster()))

    async def alerts(self, request: web.Request) -> web.Response:
        return web.json_response(dump_json(self._deps.views.alerts_listed()))

    def _silences_outbox(self) -> Outbox:
        if self._deps.outbox is None:
            raise web.HTTPConflict(
                text=json.dumps({"error": "no alert rules are configured"}),
                content_type="application/json",
            )
        return self._deps.outbox

    async def list_silences(self, request: web.Request) -> web.Response:
        silences = await self._silences_outbox().silences()
        # Earlier versions let an infinite end in; JSON has no Infinity.
        return web.json_response(
            [
                {**asdict(x), "ends_at": x.ends_at if math.isfinite(x.ends_at) else None}
                for x in silences
            ]
        )

    async def add_silence(self, request: web.Request) -> web.Response:
        outbox = self._silences_outbox()
        try:
            body = json.loads(await request.read())
            silence = silence_from_request(body, self._deps.clock.now(), self._deps.silence_max_s)
        except (ValueError, TypeError, RecursionError) as exc:
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
        return await self._ingest(
            request, lambda payload, now: pipeline.process_payload(payload, None, "http", now)
        )

    async def post_feedback(self, request: web.Request) -> web.Response:
        """Feedback events (docs/wire-format.md), answered like records: once committed."""
        feedback = self._deps.feedback
        if feedback is None:
            return web.json_response({"error": "feedback is not configured"}, status=404)
        return await self._ingest(
            request, lambda payload, now: feedback.process_payload(payload, None, "http", now)
        )

    async def _ingest(
        self, request: web.Request, process: Callable[[bytes, float], IngestResult]
    ) -> web.Response:
        pipeline = self._deps.pipeline
        if not pipeline.has_room():
            return _busy("the store is behind; retry")
        payload = await read_capped(request, self._deps.max_body_bytes)
        now = self._deps.clock.now()
        if payload is None:
            result = pipeline.reject(_too_large(request, self._deps.max_body_bytes), "http", now)
        else:
            result = process(payload, now)
        try:
            async with asyncio.timeout(COMMIT_WAIT_S):
                await asyncio.shield(pipeline.committed())
        except TimeoutError:
            return _busy("not committed yet; retry (what carries an id is counted once)")
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
        stored = await self._deps.store.feedback.for_record(record["app"], record["id"])
        record["feedback"] = [asdict(f) for f in stored]
        record["evaluations"] = await self._deps.views.evaluations(record["id"])
        return web.json_response(record)

    async def rejected(self, request: web.Request) -> web.Response:
        limit = query_int(request, "limit", 100, 1, 1000)
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


async def read_capped(request: web.Request, limit: int) -> bytes | None:
    """The body, or None when it is over `limit` bytes: then read no further than that (a
    declared length over it is not read at all), so memory stays bounded at any size."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    while len(body) <= limit:
        chunk = await request.content.read(limit + 1 - len(body))
        if not chunk:
            return bytes(body)
        body += chunk
    return None


def _too_large(request: web.Request, limit: int) -> Rejection:
    size = f"{request.content_length} bytes" if request.content_length else "chunked, longer"
    return Rejection(RejectReason.TOO_LARGE, f"body is {size}, over the limit of {limit}", b"")


def _busy(reason: str) -> web.Response:
    return web.json_response(
        {"error": reason}, status=503, headers={"Retry-After": str(RETRY_AFTER_S)}
    )


Pick = Callable[[ApiRoutes], Handler]
# (method, path, the handler once the routes exist): registered when the server starts, served
# from when the daemon hands the routes over.
SERVICE_ROUTES: tuple[tuple[str, str, Pick], ...] = (
    ("GET", "/api/v1/status", lambda r: r.status),
    ("GET", "/api/v1/cluster", lambda r: r.cluster),
    ("POST", "/api/v1/records", lambda r: r.post_records),
    ("POST", "/api/v1/feedback", lambda r: r.post_feedback),
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
