"""What every HTTP request passes before a route sees it, against a browser turned against the
API (docs/security.md): the `Host` must be one the API serves (DNS rebinding), a write must be
`application/json` from no foreign `Origin` (cross-site requests), every answer carries the
headers that keep the dashboard in its own frame with its own assets, and every error is JSON.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.typedefs import Middleware

from lookout.monitor.config import ApiConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Probes answer whatever name a load balancer or an orchestrator uses; they reveal nothing.
_ANY_HOST_PATHS = frozenset({"/healthz", "/readyz"})
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::"})  # noqa: S104 - names of the wildcard, not a bind
SECURITY_HEADERS = {
    # The dashboard loads its script, stylesheet and data from the daemon only, and nothing
    # may frame it (clickjacking).
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # `/?token=...` must not leave in a Referer.
    "Referrer-Policy": "no-referrer",
}


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _hostname(host: str) -> str:
    """The name in a `Host` header or an origin's netloc, without port or IPv6 brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _ip(name: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


class HostPolicy:
    """Which host names requests may address: loopback's, the bind address (any IP address on a
    wildcard bind: an address cannot be rebound to another) and `api.allowed_hosts`."""

    def __init__(self, cfg: ApiConfig) -> None:
        self._bind = cfg.host.lower()
        self._allowed = frozenset(cfg.allowed_hosts)
        self._names = frozenset({"localhost", self._bind, *self._allowed})

    def allows(self, host: str) -> bool:
        name = _hostname(host)
        if name in self._names:
            return True
        ip = _ip(name)
        return ip is not None and (ip.is_loopback or self._bind in _WILDCARD_BINDS)

    def same_site(self, origin: str, host: str) -> bool:
        """Whether a browser's `Origin` is the API's own (as addressed, or an allowed name)."""
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return False  # `null` (sandboxed frames, file:) and anything else
        # Same origin as the request addressed, or a name the operator allowed (a proxy in
        # front may rewrite `Host`); another port of the same host is another origin.
        return parts.netloc.lower() == host.strip().lower() or (
            _hostname(parts.netloc) in self._allowed
        )


def guards(
    cfg: ApiConfig, post_types: frozenset[str] = frozenset({"application/json"})
) -> list[Middleware]:
    """The middlewares, outermost first: JSON errors, then host, origin and content type (a
    POST's must be one of `post_types`)."""
    policy = HostPolicy(cfg)
    wanted = " or ".join(sorted(post_types))

    @web.middleware
    async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400 or exc.content_type == "application/json":
                raise
            reason = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
            return error_response(exc.status, reason or exc.reason, dict(_kept_headers(exc)))

    @web.middleware
    async def checks(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and request.path not in _ANY_HOST_PATHS and not policy.allows(host):
            return error_response(
                403,
                f"host {_hostname(host)[:100]!r} is not one this API serves: address it by its "
                "bind address or add the name to api.allowed_hosts",
            )
        if request.method in _SAFE_METHODS:
            return await handler(request)
        origin = request.headers.get("Origin")
        if origin is not None and not policy.same_site(origin, host or ""):
            return error_response(403, f"cross-origin request from {origin[:100]!r} refused")
        if request.method == "POST" and request.content_type not in post_types:
            return error_response(415, f"send the body with Content-Type: {wanted}")
        return await handler(request)

    return [json_errors, checks]


def _kept_headers(exc: web.HTTPException) -> list[tuple[str, str]]:
    return [(k, v) for k, v in exc.headers.items() if k in ("Allow", "Retry-After")]


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: on every answer, errors and aiohttp's own included."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)


def served_over_https(request: web.Request) -> bool:
    """TLS here, or a reverse proxy in front that says the browser used it."""
    if request.secure:
        return True
    forwarded = request.headers.get("X-Forwarded-Proto", "")
    if forwarded.split(",")[0].strip().lower() == "https":
        return True
    return any(f.get("proto", "").lower() == "https" for f in request.forwarded[:1])
