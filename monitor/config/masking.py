"""Secrets out of what is shown: `check-config`'s effective configuration and the values the
daemon logs. Secret fields are SecretStr (dumped as `**********`); besides them, HTTP headers
(`Authorization: Bearer ...`) and the credentials inside URLs (`user:PASS@`, `?apikey=...`)
are secrets wherever they appear."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

MASK = "**********"
_HEADER_KEYS = frozenset({"headers"})


def mask_url(url: str) -> str:
    """`url` with the password of its user part and the value of each query parameter masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    if not parts.scheme or not parts.netloc:
        return url
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        netloc = f"{user}:{MASK}@{host}" if has_password else f"{user}@{host}"
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK) for k, _ in pairs], safe="*", quote_via=quote)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def mask_tree(node: Any, key: str = "") -> Any:
    """A dumped configuration with every header value and URL credential masked."""
    if isinstance(node, dict):
        if key in _HEADER_KEYS:
            return {name: MASK for name in node}
        return {k: mask_tree(v, str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [mask_tree(v, key) for v in node]
    if isinstance(node, str) and "://" in node:
        return mask_url(node)
    return node
