"""Query parameters, checked: a value outside its range is a 400 naming the range, never
clamped into a surprise (`limit=-1` is not "every row")."""

from __future__ import annotations

import json

from aiohttp import web


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """The integer query parameter `name` in [low, high]; `default` when absent."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise web.HTTPBadRequest(
            text=json.dumps({"error": f"{name} must be an integer from {low} to {high}"}),
            content_type="application/json",
        )
    return value
