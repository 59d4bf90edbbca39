"""Webhook notifier: Alertmanager webhook v4 JSON, signed, sent with httpx.

Signature: `X-Lookout-Signature: sha256=<hex HMAC(secret, timestamp + "." + body)>` with the
timestamp in `X-Lookout-Timestamp`, so a receiver can reject replays. Every try of one
notification carries the same `Idempotency-Key`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from lookout.alerts.payload import Outcome


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return f"sha256={digest.hexdigest()}"


def verify(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    """For receivers (and tests): constant-time check of a signature header."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def retry_after_s(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - now, 0.0)
    except (TypeError, ValueError):
        return None


class WebhookNotifier:
    """POSTs each notification (one group of alerts) as it is: no merging across groups."""

    merge_limit = 1

    def __init__(
        self,
        client: httpx.AsyncClient,
        url: str,
        *,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self._client = client
        self._url = url
        self._secret = secret
        self._headers = headers or {}
        self._timeout_s = timeout_s

    async def send(self, payload: dict[str, Any], idempotency_key: str, now: float) -> Outcome:
        body = json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
        timestamp = str(int(now))
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
            "X-Lookout-Timestamp": timestamp,
        }
        if self._secret:
            headers["X-Lookout-Signature"] = sign(self._secret, timestamp, body)
        try:
            response = await self._client.post(
                self._url, content=body, headers=headers, timeout=self._timeout_s
            )
        except httpx.HTTPError as exc:  # connect errors, timeouts: the receiver may come back
            return Outcome(False, retry=True, detail=type(exc).__name__)
        code = response.status_code
        if 200 <= code < 300:
            return Outcome(True, detail=f"HTTP {code}")
        if code == 429 or code >= 500 or code == 408:
            after = retry_after_s(response.headers.get("Retry-After"), now)
            return Outcome(False, retry=True, retry_after_s=after, detail=str(code))
        return Outcome(False, retry=False, detail=f"{code}: {response.text[:200]}")
