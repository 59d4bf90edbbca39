"""An LLM app instrumented with OpenTelemetry, run as a subprocess by test_otlp_apps.py.

    python -m tests.monitor.otlp_app FAMILY OTLP_ENDPOINT [JSON_DUMP_PATH]

It serves a local OpenAI-compatible server (a real aiohttp server on loopback: a plain answer,
a streamed one, and an error for `broken-model`), instruments the `openai` client (or a
LangChain chain) with FAMILY's instrumentor, makes a plain, a streaming and a failing call,
and exports spans and logs with `opentelemetry-exporter-otlp-proto-http` to OTLP_ENDPOINT.
Instrumentors patch globally, hence a process per family. With JSON_DUMP_PATH it also writes
the same spans as OTLP JSON requests (for the JSON ingest test).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from typing import Any

from aiohttp import web

ANSWER = ["Your order ", "shipped ", "yesterday."]
PROMPT = "Where is my order?"


async def _chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    model = body["model"]
    if model == "broken-model":
        error = {"message": "model overloaded", "type": "server_error", "code": "overloaded"}
        return web.json_response({"error": error}, status=400)
    usage = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}
    base = {"id": "chatcmpl-1", "created": int(time.time()), "model": f"{model}-2024-07-18"}
    if not body.get("stream"):
        message = {"role": "assistant", "content": "".join(ANSWER)}
        choice = {"index": 0, "message": message, "finish_reason": "stop"}
        return web.json_response(
            {**base, "object": "chat.completion", "choices": [choice], "usage": usage}
        )
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    await asyncio.sleep(0.05)  # time to first token
    for i, piece in enumerate(ANSWER):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        choice = {"index": 0, "delta": delta, "finish_reason": None}
        chunk = {**base, "object": "chat.completion.chunk", "choices": [choice]}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.02)
    last_choice = {"index": 0, "delta": {}, "finish_reason": "stop"}
    last = {**base, "object": "chat.completion.chunk", "choices": [last_choice], "usage": usage}
    await response.write(f"data: {json.dumps(last)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    return response


def serve_openai() -> str:
    """Start the local OpenAI-compatible server in a thread; its base URL."""
    ready = threading.Event()
    port: list[int] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_post("/v1/chat/completions", _chat)
        runner = web.AppRunner(app, access_log=None)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        port.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        ready.set()
        loop.run_forever()

    threading.Thread(target=run, daemon=True).start()
    ready.wait(10)
    return f"http://127.0.0.1:{port[0]}/v1"


def instrument(family: str) -> None:
    if family == "openai-v2":
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as V2

        V2().instrument()  # type: ignore[no-untyped-call]
    elif family == "openllmetry":
        from opentelemetry.instrumentation.openai import OpenAIInstrumentor as Traceloop

        Traceloop().instrument()
    elif family == "openinference":
        from openinference.instrumentation.openai import OpenAIInstrumentor as OpenInference

        OpenInference().instrument()
    elif family == "openinference-langchain":
        from openinference.instrumentation.langchain import LangChainInstrumentor

        LangChainInstrumentor().instrument()
    else:
        raise SystemExit(f"unknown family {family}")


def calls(family: str, base_url: str) -> None:
    if family == "openinference-langchain":
        from langchain_core.prompts import ChatPromptTemplate
        from langchain_openai import ChatOpenAI
        from pydantic import SecretStr

        template = ChatPromptTemplate.from_messages([("system", "Be brief."), ("user", "{q}")])
        for model, stream in (("gpt-4o-mini", False), ("gpt-4o-mini", True), ("broken-model", 0)):
            key = SecretStr("sk-test")
            llm = ChatOpenAI(model=model, base_url=base_url, api_key=key, max_retries=0)
            chain = template | llm
            try:
                if stream:
                    list(chain.stream({"q": PROMPT}, {"metadata": {"session_id": "s-1"}}))
                else:
                    chain.invoke({"q": PROMPT})
            except Exception as exc:  # the failing call
                print("failed as expected:", type(exc).__name__)
        return
    import openai

    client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
    messages: Any = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": PROMPT},
    ]
    client.chat.completions.create(model="gpt-4o-mini", messages=messages)
    chunks = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
    )
    for _ in chunks:
        pass
    try:
        client.chat.completions.create(model="broken-model", messages=messages)
    except openai.BadRequestError as exc:
        print("failed as expected:", type(exc).__name__)


def main() -> None:
    family, endpoint = sys.argv[1], sys.argv[2]
    dump = sys.argv[3] if len(sys.argv) > 3 else None
    from opentelemetry import _logs, trace
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    resource = Resource.create({"service.name": f"shop-{family}"})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"))
    )
    memory = InMemorySpanExporter()
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(tracer_provider)
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(OTLPLogExporter(endpoint=f"{endpoint}/v1/logs"))
    )
    _logs.set_logger_provider(logger_provider)
    instrument(family)
    calls(family, serve_openai())
    logger_provider.force_flush()  # logs first: the usual order (their timer is shorter)
    tracer_provider.force_flush()
    logger_provider.shutdown()
    tracer_provider.shutdown()
    if dump is not None:
        from google.protobuf.json_format import MessageToDict
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        request = MessageToDict(
            encode_spans(memory.get_finished_spans()), use_integers_for_enums=True
        )
        with open(dump, "w") as f:
            json.dump(otlp_json(request), f)


def otlp_json(node: Any) -> Any:
    """protobuf's canonical JSON as OTLP JSON: trace and span ids hex, not base64."""
    import base64

    if isinstance(node, list):
        return [otlp_json(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {
        key: base64.b64decode(value).hex()
        if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str)
        else otlp_json(value)
        for key, value in node.items()
    }


if __name__ == "__main__":
    main()
