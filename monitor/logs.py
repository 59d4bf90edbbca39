"""Logging set-up, done once in the entry point: one JSON object a line on stdout for journald.

structlog events and the stdlib records of libraries (aiohttp, aiomqtt/paho, amqtt,
apscheduler, ...) go through one stdlib handler whose structlog `ProcessorFormatter` renders
both alike: every line carries `timestamp`, `level`, `event` and `logger`. lookout's own loggers
(`lookout.*`) log at the configured level; libraries only from WARNING, unless it is higher.
"""

from __future__ import annotations

import logging
import sys

import structlog

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_HANDLER_NAME = "lookout-stdout"
# Chatty even at WARNING (amqtt reports every client that goes away; transitions is its FSM).
# aiohttp's access log is INFO, below the libraries' WARNING floor, so needs no entry here.
_QUIET_LIBRARIES = ("amqtt", "transitions")

# Run on every entry, structlog's own and stdlib's alike, before the renderer.
_SHARED_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]


def configure_logging(level: str = "info", *, json: bool = True) -> None:
    """Route structlog and stdlib logging to stdout, as JSON lines (or console text)."""
    numeric = _LEVELS[level]
    structlog.configure(
        processors=[*_SHARED_PROCESSORS, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=True,
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED_PROCESSORS,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    # Configuring twice (tests, the demo after a run) replaces our handler, not doubles it.
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.WARNING))
    logging.getLogger("lookout").setLevel(numeric)
    for noisy in _QUIET_LIBRARIES:
        logging.getLogger(noisy).setLevel(logging.ERROR)
