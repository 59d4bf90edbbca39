"""For apps: publish one record per LLM call to lookout over MQTT, without blocking the app.

    from lookout_client import LookoutCallbackHandler, RecordPublisher, publish_record

    publisher = RecordPublisher(app="support-bot")          # mqtt://127.0.0.1:1883
    llm.invoke("hi", config={"callbacks": [LookoutCallbackHandler(publisher)]})
    publish_record(publisher, prompt="hi", response="hello", latency_ms=812)  # without LangChain

`LookoutCallbackHandler` needs the `langchain` extra; it is imported on first use, so an app
without LangChain uses the publisher with paho-mqtt alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lookout_client.publisher import RecordPublisher, publish_record

if TYPE_CHECKING:
    from lookout_client.callback import LookoutCallbackHandler

__version__ = "0.1.0"
__all__ = ["LookoutCallbackHandler", "RecordPublisher", "__version__", "publish_record"]


def __getattr__(name: str) -> object:
    # Lazy: importing langchain-core costs about a second and is an optional extra.
    if name == "LookoutCallbackHandler":
        from lookout_client.callback import LookoutCallbackHandler

        return LookoutCallbackHandler
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
