"""HTTP API (aiohttp): health, Prometheus metrics, status, record ingest and lookup, and the
dashboard's routes.

aiohttp's AppRunner serves inside our own event loop and TaskGroup without taking over signal
handling, which uvicorn's server does.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from lookout.alerts.outbox import SqliteOutbox, silence_from_request
from lookout.monitor.ingest.records import RejectReason

if TYPE_CHECKING:
    from types import TracebackType

    from prometheus_client import CollectorRegistry

    from lookout.clock import Clock
    from lookout.monitor.config import ApiConfig
    from lookout.monitor.ingest.pipeline import Pipeline
    from lookout.monitor.storage import Store
    from lookout.monitor.web.dashboard import Dashboard

log = structlog.get_logger(__name__)
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class ApiDeps:
    pipeline: Pipeline
    store: Store
    registry: CollectorRegistry
    clock: Clock
    bus_connected: Callable[[], bool]
    status: Callable[[], dict[str, Any]]
    alerts: Callable[[], list[dict[str, Any]]]
    outbox: Callable[[], SqliteOutbox | None]
    max_payload_bytes: int
    verdicts: Callable[[str], Awaitable[list[dict[str, Any]]]] | None = None
    dashboard: Dashboard | None = None
    # False while the daemon starts: the API already answers, but records posted then would
    # miss the detectors and rules not yet wired, so they are refused (503, Retry-After).
    started: Callable[[], bool] = lambda: True


class ApiServer:
    def __init__(self, cfg: ApiConfig, deps: ApiDeps) -> None:
        self._cfg = cfg
        self._deps = deps
        self._token = cfg.token.get_secret_value().encode() if cfg.token else None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[self._auth], client_max_size=self._deps.max_payload_bytes + 1
        )
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/api/v1/status", self._status)
        app.router.add_post("/api/v1/records", self._post_records)
        app.router.add_get("/api/v1/records/{record_id}", self._get_record)
        app.router.add_get("/api/v1/rejected", self._rejected)
        app.router.add_get("/api/v1/alerts", self._alerts)
        app.router.add_get("/api/v1/silences", self._list_silences)
        app.router.add_post("/api/v1/silences", self._add_silence)
        app.router.add_delete("/api/v1/silences/{silence_id}", self._expire_silence)
        if self._deps.dashboard is not None:
            self._deps.dashboard.add_routes(app)
        return app

    async def __aenter__(self) -> ApiServer:
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._cfg.host, self._cfg.port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise OSError(f"cannot listen on {self._cfg.bind}: {exc.strerror}") from exc
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self._cfg.port
        log.info("api_listening", bind=f"{self._cfg.host}:{self.port}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is not None and request.path not in _OPEN_PATHS:
            # The dashboard's browser sends the cookie set by `/?token=...`.
            given = (
                request.headers.get("Authorization", "").removeprefix("Bearer ")
                or request.cookies.get("lookout_token", "")
                or (request.query.get("token", "") if request.path == "/" else "")
            ).encode()
            if not hmac.compare_digest(given, self._token):
                return web.json_response(
                    {
                        "error": "unauthorized: send Authorization: Bearer <api.token> (the "
                        "dashboard: open /?token=<api.token>)"
                    },
                    status=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        started, bus = self._deps.started(), self._deps.bus_connected()
        store = await self._deps.store.writable()
        ready = started and bus and store
        body = {"ready": ready, "started": started, "bus_connected": bus, "store_writable": store}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._deps.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _status(self, request: web.Request) -> web.Response:
        return web.json_response(self._deps.status())

    async def _alerts(self, request: web.Request) -> web.Response:
        return web.json_response(self._deps.alerts())

    def _silence_book(self) -> SqliteOutbox:
        outbox = self._deps.outbox()
        if outbox is None:
            raise web.HTTPConflict(
                text=json.dumps({"error": "no alert rules are configured"}),
                content_type="application/json",
            )
        return outbox

    async def _list_silences(self, request: web.Request) -> web.Response:
        silences = await self._silence_book().silences()
        return web.json_response([asdict(x) for x in silences])

    async def _add_silence(self, request: web.Request) -> web.Response:
        book = self._silence_book()
        try:
            silence = silence_from_request(await request.json(), self._deps.clock.now())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        await book.add_silence(silence)
        return web.json_response(asdict(silence), status=201)

    async def _expire_silence(self, request: web.Request) -> web.Response:
        book = self._silence_book()
        now = self._deps.clock.now()
        if not await book.expire_silence(request.match_info["silence_id"], now):
            return web.json_response({"error": "no such active silence"}, status=404)
        return web.json_response({"expired": True})

    async def _post_records(self, request: web.Request) -> web.Response:
        if not self._deps.started():
            return web.json_response(
                {"error": "lookout is starting; retry shortly"},
                status=503,
                headers={"Retry-After": "1"},
            )
        payload = await request.read()
        result = self._deps.pipeline.process_payload(payload, None, "http", self._deps.clock.now())
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

    async def _get_record(self, request: web.Request) -> web.Response:
        record = await self._deps.store.get_record(request.match_info["record_id"])
        if record is None:
            return web.json_response(
                {"error": "no such record (only a sample of ok records is kept)"}, status=404
            )
        for key in ("metadata", "flags"):
            if record.get(key):
                record[key] = json.loads(record[key])
        verdicts = self._deps.verdicts
        record["verdicts"] = await verdicts(record["id"]) if verdicts is not None else []
        return web.json_response(record)

    async def _rejected(self, request: web.Request) -> web.Response:
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
