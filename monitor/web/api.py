"""HTTP API server (aiohttp): the listening socket, the bearer token, and the routes that need
nothing but the store and the registry (health, readiness, Prometheus metrics).

It listens from early in the start-up, so probes answer while a model loads. The routes that
serve the running services (web/routes.py) are registered too but answer 503 with Retry-After
until the daemon hands them over with `serve()`, once every service is built: records taken
before then would miss the detectors and rules.

aiohttp's AppRunner serves inside our own event loop and TaskGroup without taking over signal
handling, which uvicorn's server does.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from lookout.monitor.config import ApiConfig
from lookout.monitor.storage import Store
from lookout.monitor.web.guards import add_security_headers, guards
from lookout.monitor.web.routes import SERVICE_ROUTES, ApiRoutes, Handler, Pick

log = structlog.get_logger(__name__)
_OPEN_PATHS = frozenset({"/healthz", "/readyz"})


async def listen(
    app: web.Application, cfg: ApiConfig, setting: str, **server_options: Any
) -> tuple[web.AppRunner, int]:
    """Serve `app` at `cfg.bind` (port 0: a free one): its runner and the port it got.
    `setting` names the config key to change when the address is taken."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **server_options)
    await runner.setup()
    site = web.TCPSite(runner, cfg.host, cfg.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        env = "LOOKOUT_" + setting.upper().replace(".", "__")
        raise OSError(
            f"cannot listen on {cfg.bind}: {exc.strerror}; choose another HOST:PORT with "
            f"{setting} in the config or {env}"
        ) from exc
    sockets = getattr(site._server, "sockets", None) or []
    return runner, sockets[0].getsockname()[1] if sockets else cfg.port


@dataclass(frozen=True)
class Probes:
    """What `/readyz` checks."""

    started: Callable[[], bool]  # every component wired and ingesting
    bus_connected: Callable[[], bool]
    store: Store


class ApiServer:
    def __init__(
        self,
        cfg: ApiConfig,
        probes: Probes,
        *,
        registry: CollectorRegistry,
        max_payload_bytes: int,
    ) -> None:
        self._cfg = cfg
        self._probes = probes
        self._registry = registry
        self._max_payload_bytes = max_payload_bytes
        self._token = cfg.token.get_secret_value().encode() if cfg.token else None
        self._routes: ApiRoutes | None = None
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def serve(self, routes: ApiRoutes) -> None:
        """Serve the service routes from now on."""
        self._routes = routes

    def app(self) -> web.Application:
        app = web.Application(
            middlewares=[*guards(self._cfg), self._auth],
            client_max_size=self._max_payload_bytes + 1,
        )
        app.on_response_prepare.append(add_security_headers)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        for method, path, pick in SERVICE_ROUTES:
            app.router.add_route(method, path, self._once_served(pick))
        return app

    async def __aenter__(self) -> ApiServer:
        self._runner, self.port = await listen(self.app(), self._cfg, "api.bind")
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

    def _once_served(self, pick: Pick) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            if self._routes is None:
                return web.json_response(
                    {"error": "lookout is starting; retry shortly"},
                    status=503,
                    headers={"Retry-After": "1"},
                )
            return await pick(self._routes)(request)

        return handle

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if self._token is not None and request.path not in _OPEN_PATHS:
            # The dashboard's browser sends the cookie set by `/?token=...`; opening that link
            # again with a new token replaces a stale cookie.
            given = (
                request.headers.get("Authorization", "").removeprefix("Bearer ")
                or (request.query.get("token", "") if request.path == "/" else "")
                or request.cookies.get("lookout_token", "")
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
            query_token = request.query.get("token", "").encode()
            # Only a configured token that matched becomes the dashboard's cookie.
            request["token_from_query"] = hmac.compare_digest(query_token, self._token)
        return await handler(request)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        started, bus = self._probes.started(), self._probes.bus_connected()
        store = await self._probes.store.writable()
        ready = started and bus and store
        body = {"ready": ready, "started": started, "bus_connected": bus, "store_writable": store}
        return web.json_response(body, status=200 if ready else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
