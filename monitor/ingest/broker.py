"""An in-process MQTT broker (amqtt) so one box needs nothing else (`--embedded-broker`).

PERF_NOTES: ~1.4k msg/s at QoS 1 in-process; real load belongs on Mosquitto.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import structlog
from amqtt.broker import Broker

from lookout.errors import BusError

if TYPE_CHECKING:
    from types import TracebackType

    from lookout.monitor.config import BusConfig

log = structlog.get_logger(__name__)


class EmbeddedBroker:
    def __init__(self, cfg: BusConfig) -> None:
        if cfg.tls:
            raise BusError("the embedded broker serves plain mqtt:// only")
        self._bind = f"{cfg.host}:{cfg.port}"
        self._config: dict[str, Any] = {
            "listeners": {"default": {"type": "tcp", "bind": self._bind}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        self._broker: Broker | None = None

    async def __aenter__(self) -> EmbeddedBroker:
        logging.getLogger("amqtt").setLevel(logging.ERROR)
        broker = Broker(self._config)
        try:
            await broker.start()
        except Exception as exc:
            raise BusError(f"cannot start the embedded broker on {self._bind}: {exc}") from exc
        self._broker = broker
        log.info("embedded_broker_started", bind=self._bind)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._broker is not None:
            await self._broker.shutdown()
