"""Embedders from config, including LangChain against a real local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from lookout.errors import ConfigError
from lookout.monitor.config import EmbedderConfig
from lookout.monitor.detection.embedding import build_embedder
from tests.conftest import serving


def vector(text: str, dim: int = 16) -> list[float]:
    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")
    return list(np.random.default_rng(seed).standard_normal(dim).astype(float))


@pytest.fixture
async def openai_server() -> AsyncIterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    async def embeddings(request: web.Request) -> web.Response:
        body = await request.json()
        seen.append({"auth": request.headers.get("Authorization"), **body})
        data = [
            {"object": "embedding", "index": i, "embedding": vector(t)}
            for i, t in enumerate(body["input"])
        ]
        usage = {"prompt_tokens": 1, "total_tokens": 1}
        return web.json_response(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    app = web.Application()
    app.router.add_post("/v1/embeddings", embeddings)
    async with serving(app) as url:
        yield f"{url}/v1", seen


async def test_langchain_embeddings_from_an_openai_compatible_endpoint(
    openai_server: tuple[str, list[dict[str, Any]]],
) -> None:
    url, seen = openai_server
    cfg = EmbedderConfig.model_validate(
        {
            "kind": "langchain",
            "base_url": url,
            "spec": "openai:text-embedding-3-small",
            "api_key": "sk-local",
        }
    )
    embedder = await asyncio.to_thread(build_embedder, cfg)
    assert embedder.dim == 16
    x = await asyncio.to_thread(embedder.embed, ["refund my order", "hello"])
    assert x.shape == (2, 16) and np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    expected = np.asarray(vector("refund my order"))
    assert np.allclose(x[0], expected / np.linalg.norm(expected), atol=1e-5)
    last = seen[-1]
    assert last["auth"] == "Bearer sk-local" and last["input"] == ["refund my order", "hello"]
    assert json.dumps(last).count("sk-local") == 1  # the key went in the header only


def test_an_unusable_embedder_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"detectors\.embedder\.model"):
        build_embedder(EmbedderConfig.model_validate({"kind": "sentence-transformers"}))
    with pytest.raises(ConfigError, match=r"detectors\.embedder"):
        build_embedder(EmbedderConfig.model_validate({"kind": "static", "model": "/nonexistent"}))
    hashing = build_embedder(EmbedderConfig.model_validate({"kind": "hashing", "dim": 64}))
    assert hashing.embed(["a b c"]).shape == (1, 64)
