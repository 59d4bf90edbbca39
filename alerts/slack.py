"""Slack notifier on slack-sdk (async): an incoming-webhook URL, or a bot token and a channel
(chat.postMessage).

Renders the Alertmanager-shaped notification as Block Kit inside a coloured attachment (the
colour says severity; resolved is green), with a fallback `text` for notifications and screen
readers. Within Slack's limits by construction: at most 50 blocks, section text at most 3,000
characters, at most 10 fields. Posts are paced to one a second per channel, and a burst of due
notifications is merged into one message by the delivery worker (`merge_limit`). With the Web
API a resolved message is threaded under the message that announced the alert.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient
from slack_sdk.webhook.async_client import AsyncWebhookClient

from lookout.alerts.payload import Outcome
from lookout.alerts.webhook import retry_after_s

if TYPE_CHECKING:
    from types import TracebackType

    from lookout.clock import Clock

MAX_BLOCKS = 50
MAX_SECTION_CHARS = 3000
MAX_FIELD_CHARS = 2000
MAX_FIELDS = 10
MAX_HEADER_CHARS = 150
MAX_TEXT_CHARS = 3000
MAX_ALERTS_SHOWN = 20  # per message; the rest are counted in a context line

_STYLE = {  # severity -> attachment colour, emoji
    "critical": ("#E01E5A", ":red_circle:"),
    "warning": ("#ECB22E", ":large_orange_circle:"),
    "info": ("#36C5F0", ":large_blue_circle:"),
}
_RESOLVED_STYLE = ("#2EB67D", ":white_check_mark:")
_RETRYABLE_ERRORS = frozenset(
    {"ratelimited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
# slack-sdk logs URLs and headers at DEBUG: a webhook URL or a token must never reach the logs
# whatever level the daemon runs at.
_sdk_log = logging.getLogger("lookout.slack_sdk")
_sdk_log.setLevel(logging.WARNING)
_sdk_log.propagate = False


class PostedMessageStore(Protocol):
    """Where the ids of posted Slack messages are kept across restarts (the outbox), so a
    resolution is threaded under the message that announced its alerts."""

    async def message_ids(self, channel: str, alert_keys: Collection[str]) -> dict[str, str]: ...

    async def remember_message(
        self, channel: str, message_id: str, alert_keys: Collection[str], now: float
    ) -> None: ...


def escape(text: str) -> str:
    """Slack mrkdwn control characters; labels and summaries come from users' data."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _link(url: str, label: str) -> str:
    """A mrkdwn link whose URL cannot close it early or smuggle in a label of its own."""
    return f"<{escape(url).replace('|', '%7C')}|{escape(label)}>"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _epoch(iso: str) -> int | None:
    try:
        ts = int(datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return None
    return ts if ts > 0 else None


def _when(iso: str) -> str:
    ts = _epoch(iso)
    if ts is None:
        return "-"
    return f"<!date^{ts}^{{date_short_pretty}} {{time}}|{escape(iso)}>"


def _alert_block(alert: dict[str, Any]) -> dict[str, Any]:
    labels = alert.get("labels", {})
    notes = alert.get("annotations", {})
    resolved = alert.get("status") == "resolved"
    text = f"*{escape(notes.get('summary', labels.get('alertname', 'alert')))}*"
    if notes.get("description"):
        text += "\n" + escape(notes["description"])
    shown = {k: v for k, v in labels.items() if k not in ("alertname", "severity")}
    fields = []
    if "value" in notes:
        compare = f" (threshold {escape(notes['threshold'])})" if "threshold" in notes else ""
        fields.append(f"*Value*\n{escape(notes['value'])}{compare}")
    fields.append(f"*Since*\n{_when(alert.get('startsAt', ''))}")
    if resolved:
        fields.append(f"*Resolved*\n{_when(alert.get('endsAt', ''))}")
    if shown:
        fields.append(
            "*Labels*\n" + ", ".join(f"{escape(k)}=`{escape(v)}`" for k, v in shown.items())
        )
    if alert.get("generatorURL"):
        fields.append(f"*Dashboard*\n{_link(alert['generatorURL'], 'open')}")
    return {
        "type": "section",
        "text": {"type": "mrkdwn", "text": _cut(text, MAX_SECTION_CHARS)},
        "fields": [
            {"type": "mrkdwn", "text": _cut(f, MAX_FIELD_CHARS)} for f in fields[:MAX_FIELDS]
        ],
    }


def slack_message(payload: dict[str, Any]) -> dict[str, Any]:
    """`text` (fallback) and `attachments` (coloured Block Kit) for one notification."""
    alerts: list[dict[str, Any]] = payload.get("alerts", [])
    resolved = payload.get("status") == "resolved"
    severities = [a.get("labels", {}).get("severity", "warning") for a in alerts]
    worst = next((s for s in ("critical", "warning", "info") if s in severities), "warning")
    colour, emoji = _RESOLVED_STYLE if resolved else _STYLE[worst]
    rules = sorted({a.get("labels", {}).get("alertname", "alert") for a in alerts})
    status = "RESOLVED" if resolved else "FIRING"
    title = f"{emoji} [{status}:{len(alerts)}] {', '.join(rules)}"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {"type": "plain_text", "text": _cut(title, MAX_HEADER_CHARS), "emoji": True},
        },
    ]
    blocks += [_alert_block(a) for a in alerts[:MAX_ALERTS_SHOWN]]
    context = [f"severity *{worst}*" if not resolved else "resolved", "lookout"]
    if len(alerts) > MAX_ALERTS_SHOWN:
        context.insert(0, f"…and {len(alerts) - MAX_ALERTS_SHOWN} more alerts")
    if payload.get("externalURL"):
        context.append(_link(payload["externalURL"], "dashboard"))
    blocks.append(
        {"type": "context", "elements": [{"type": "mrkdwn", "text": " · ".join(context)}]}
    )
    summaries = [a.get("annotations", {}).get("summary", "") for a in alerts]
    # Slack reads `text` and `fallback` as mrkdwn too: an app label of `<!channel>` must not ping.
    fallback = escape(f"[{status}:{len(alerts)}] {', '.join(rules)}: " + "; ".join(summaries))
    return {
        "text": _cut(fallback, MAX_TEXT_CHARS),
        "attachments": [
            {
                "color": colour,
                "fallback": _cut(fallback, MAX_TEXT_CHARS),
                "blocks": blocks[:MAX_BLOCKS],
            }
        ],
    }


def _alert_key(alert: dict[str, Any]) -> str:
    return f"{alert.get('fingerprint', '')}:{alert.get('startsAt', '')}"


class SlackNotifier:
    """One lookout channel: a Slack incoming webhook, or chat.postMessage to one channel."""

    merge_limit = MAX_ALERTS_SHOWN

    def __init__(
        self,
        name: str,
        *,
        clock: Clock,
        webhook_url: str | None = None,
        token: str | None = None,
        channel: str | None = None,
        api_url: str = "https://slack.com/api/",
        posted_messages: PostedMessageStore | None = None,
        timeout_s: float = 10.0,
        min_interval_s: float = 1.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not webhook_url and not (token and channel):
            raise ValueError(f"slack channel {name!r}: needs webhook_url, or token and channel")
        self._name = name
        self._clock = clock
        self._webhook_url = webhook_url
        self._token = token
        self._channel = channel
        self._api_url = api_url if api_url.endswith("/") else api_url + "/"
        self._posted_messages = posted_messages
        self._timeout_s = timeout_s
        self._min_interval_s = min_interval_s
        self._sleep = sleep
        self._last_post_at: float | None = None
        self._session: aiohttp.ClientSession | None = None
        self._webhook: AsyncWebhookClient | None = None
        self._web: AsyncWebClient | None = None

    async def __aenter__(self) -> SlackNotifier:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self._timeout_s))
        timeout = int(self._timeout_s) or 1
        # Built once over the one session; their own retries off: the outbox retries.
        if self._webhook_url:
            self._webhook = AsyncWebhookClient(
                self._webhook_url,
                timeout=timeout,
                session=self._session,
                logger=_sdk_log,
                retry_handlers=[],
            )
        else:
            self._web = AsyncWebClient(
                token=self._token,
                base_url=self._api_url,
                timeout=timeout,
                session=self._session,
                logger=_sdk_log,
                retry_handlers=[],
            )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def _pace(self) -> None:
        if self._last_post_at is not None:
            wait_s = self._last_post_at + self._min_interval_s - self._clock.monotonic()
            if wait_s > 0:
                await self._sleep(wait_s)
        self._last_post_at = self._clock.monotonic()

    async def send(self, payload: dict[str, Any], idempotency_key: str, now: float) -> Outcome:
        # Slack has no idempotency keys: a retry after a lost answer may post twice.
        message = slack_message(payload)
        await self._pace()
        try:
            if self._webhook_url:
                return await self._send_webhook(message, now)
            return await self._post_message(payload, message, now)
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The exception text may hold the webhook URL, a secret: name the type only.
            return Outcome(False, retry=True, detail=type(exc).__name__)

    async def _send_webhook(self, message: dict[str, Any], now: float) -> Outcome:
        assert self._webhook is not None, "use the notifier as an async context manager"
        text, attachments = message["text"], message["attachments"]
        response = await self._webhook.send(text=text, attachments=attachments)
        code = response.status_code
        if code == 200:
            return Outcome(True, detail="HTTP 200 ok")
        detail = f"{code}: {response.body[:200]}"
        if code == 429 or code >= 500:
            after = retry_after_s(response.headers.get("Retry-After"), now)
            return Outcome(False, retry=True, retry_after_s=after, detail=detail)
        return Outcome(False, detail=detail)

    async def _post_message(
        self, payload: dict[str, Any], message: dict[str, Any], now: float
    ) -> Outcome:
        alerts = payload.get("alerts", [])
        keys = [_alert_key(a) for a in alerts]
        thread_ts = None
        if payload.get("status") == "resolved" and self._posted_messages is not None:
            known = await self._posted_messages.message_ids(self._name, keys)
            parents = {known.get(k) for k in keys}
            if len(parents) == 1:  # every alert announced in one message: answer in its thread
                thread_ts = parents.pop()
        assert self._web is not None, "use the notifier as an async context manager"
        try:
            response = await self._web.chat_postMessage(
                channel=self._channel or "",
                text=message["text"],
                attachments=message["attachments"],
                thread_ts=thread_ts,
                unfurl_links=False,
            )
        except SlackApiError as exc:
            code = exc.response.status_code
            error = (
                str(exc.response.get("error", "")) if isinstance(exc.response.data, dict) else ""
            )
            detail = f"{code}: {error or 'error'}"
            if code == 429 or code >= 500 or error in _RETRYABLE_ERRORS:
                after = retry_after_s(exc.response.headers.get("Retry-After"), now)
                return Outcome(False, retry=True, retry_after_s=after, detail=detail)
            return Outcome(False, detail=detail)
        ts = str(response.get("ts", ""))
        if ts and self._posted_messages is not None and payload.get("status") == "firing":
            await self._posted_messages.remember_message(self._name, ts, keys, now)
        return Outcome(True, detail=f"HTTP {response.status_code} ok", message_id=ts or None)
