"""Picks a channel's notifier by its `kind`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from lookout.alerts.slack import PostedMessageStore, SlackNotifier
from lookout.alerts.webhook import WebhookNotifier

if TYPE_CHECKING:
    import httpx

    from lookout.alerts.config import ChannelConfig
    from lookout.alerts.delivery import ChannelNotifier
    from lookout.clock import Clock


@contextlib.asynccontextmanager
async def build_notifier(
    name: str,
    channel: ChannelConfig,
    *,
    http: httpx.AsyncClient,
    clock: Clock,
    posted_messages: PostedMessageStore | None = None,
) -> AsyncIterator[ChannelNotifier]:
    if channel.kind == "webhook":
        secret = channel.secret.get_secret_value() if channel.secret else None
        yield WebhookNotifier(
            http,
            channel.url or "",
            secret=secret,
            headers=channel.headers,
            timeout_s=channel.timeout_s,
        )
        return
    slack = SlackNotifier(
        name,
        clock=clock,
        webhook_url=channel.webhook_url.get_secret_value() if channel.webhook_url else None,
        token=channel.token.get_secret_value() if channel.token else None,
        channel=channel.channel,
        api_url=channel.api_url,
        posted_messages=posted_messages,
        timeout_s=channel.timeout_s,
        min_interval_s=channel.min_interval,
    )
    async with slack:
        yield slack
