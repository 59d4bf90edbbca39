"""Picks the embedder a config names; wraps LangChain `Embeddings` (network endpoints) here,
at the edge, since detectors/ does no I/O."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from lookout.detectors.arrays import normalise_rows
from lookout.detectors.embedders import (
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    StaticEmbedder,
)
from lookout.detectors.onnx_embedder import OnnxEmbedder
from lookout.errors import ConfigError

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from lookout.monitor.config import EmbedderConfig


class LangChainEmbedder:
    """Any LangChain `Embeddings`: OpenAI-compatible endpoints, Ollama, ... Called from the
    detection thread, so its blocking client never touches the event loop."""

    def __init__(self, embeddings: Any, name: str, dim: int | None = None) -> None:
        self._embeddings = embeddings
        self.name = name
        self.dim = dim or len(embeddings.embed_query("dimension probe"))

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalise_rows(np.asarray(self._embeddings.embed_documents(list(texts))))


@functools.lru_cache(maxsize=4)
def _static(path: str | None) -> StaticEmbedder:
    # Read-only once loaded: daemons and commands in one process share the table.
    return StaticEmbedder(Path(path) if path else None)


@functools.lru_cache(maxsize=4)
def _onnx(path: str | None, precision: Literal["int8", "fp32"], threads: int) -> OnnxEmbedder:
    # Stateless once loaded (ONNX Runtime sessions may run from several threads).
    return OnnxEmbedder(Path(path) if path else None, precision=precision, threads=threads)


def build_embedder(cfg: EmbedderConfig) -> Embedder:
    try:
        if cfg.kind == "static":
            return _static(cfg.model)
        if cfg.kind == "hashing":
            return HashingEmbedder(cfg.dim)
        if cfg.kind == "onnx":
            return _onnx(cfg.model, cfg.precision, cfg.threads or 1)
        if cfg.kind == "sentence-transformers":
            if not cfg.model:
                raise ConfigError("detectors.embedder.model: a sentence-transformers model")
            return SentenceTransformerEmbedder(cfg.model, layers=cfg.layers, threads=cfg.threads)
        return _langchain(cfg)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"detectors.embedder: {exc}") from exc


def _langchain(cfg: EmbedderConfig) -> Embedder:
    if not cfg.spec:
        raise ConfigError("detectors.embedder.spec: e.g. openai:text-embedding-3-small")
    provider, _, model = cfg.spec.partition(":")
    key = cfg.api_key.get_secret_value() if cfg.api_key else None
    try:
        if provider == "openai":
            from langchain_openai import OpenAIEmbeddings

            kwargs: dict[str, Any] = {"model": model}
            if cfg.base_url:
                # OpenAI-compatible servers take text, not the token ids tiktoken would send.
                kwargs.update(base_url=cfg.base_url, check_embedding_ctx_length=False)
            if key:
                kwargs["api_key"] = key
            return LangChainEmbedder(OpenAIEmbeddings(**kwargs), cfg.spec)
        from langchain.embeddings import init_embeddings

        return LangChainEmbedder(init_embeddings(cfg.spec), cfg.spec)
    except ImportError as exc:
        raise ConfigError(
            f"detectors.embedder.spec {cfg.spec!r}: install the LangChain integration ({exc.name})"
        ) from exc
