"""The detectors' section: the embedder, the reference, drift, OOD and the sampling budget."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, SecretStr, model_validator

from lookout.durations import DurationS
from lookout.monitor.config.base import Section


class EmbedderConfig(Section):
    # static: packaged, distilled from all-MiniLM-L6-v2, no download (bench/ood.py chose it)
    kind: Literal["static", "hashing", "onnx", "sentence-transformers", "langchain"] = "static"
    # sentence-transformers name or path; static, onnx: a model directory (default: packaged)
    model: str | None = None
    spec: str | None = None  # langchain: init_embeddings spec, e.g. openai:text-embedding-3-small
    base_url: str | None = None  # langchain: an OpenAI-compatible endpoint
    api_key: SecretStr | None = None
    dim: int = Field(default=512, ge=16)  # hashing
    # sentence-transformers: pool the mean of the last N layers (2 ranks out-of-scope texts
    # best on CLINC150's validation split; 1 is the model's own sentence embedding)
    layers: int = Field(default=2, ge=1)
    # sentence-transformers: torch's threads (null: torch's default, one per core); onnx:
    # ONNX Runtime's (null: 1). 1 leaves the other cores to ingest and the API
    # (bench/ingest.py --embedder)
    threads: int | None = Field(default=1, ge=1)
    # onnx: the packaged graph is int8 (dynamic quantisation); fp32 needs a graph built with
    # tools/export_onnx.py --fp32 DIR and `model: DIR`
    precision: Literal["int8", "fp32"] = "int8"


class ReferenceConfig(Section):
    auto_size: int = Field(default=1000, ge=10)


class DriftConfig(Section):
    window: int = Field(default=200, ge=5)
    ert: float = Field(default=10_000, gt=1)


class OodConfig(Section):
    fpr: float = Field(default=0.01, gt=0, lt=1)
    # Publish each flagged record's id and score here ({app} and {field} are filled in);
    # never its text.
    output_topic: str | None = None


_FIELDS: list[Literal["prompt", "response"]] = ["prompt", "response"]


class DetectorsConfig(Section):
    enabled: bool = True
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0)
    # Per app, instead of sample_rate: {app: share}
    sample_rates: dict[str, Annotated[float, Field(ge=0.0, le=1.0)]] = Field(default_factory=dict)
    fields: list[Literal["prompt", "response"]] = Field(default_factory=_FIELDS.copy)
    embedder: EmbedderConfig = EmbedderConfig()
    reference: ReferenceConfig = ReferenceConfig()
    drift: DriftConfig = DriftConfig()
    ood: OodConfig = OodConfig()
    queue_size: int = Field(default=10_000, ge=100)
    # A CPU budget, whatever the traffic: the share of one core the detection thread may use
    # for embedding and scoring; the texts a second it admits follow the CPU it measured per
    # text, up to max_texts_per_s. sample_rate applies within it.
    max_cpu_share: float = Field(default=0.15, gt=0, le=64)
    max_texts_per_s: float = Field(default=1000.0, gt=0)
    # Drift windows and OOD counts are saved on stop and this often while running, so a crash
    # loses at most this much of them.
    checkpoint_interval: DurationS = 60.0

    @model_validator(mode="after")
    def _enough_reference(self) -> DetectorsConfig:
        if self.reference.auto_size < 4 * self.drift.window:
            raise ValueError(
                f"reference.auto_size ({self.reference.auto_size}) must be at least 4 x "
                f"drift.window ({4 * self.drift.window}): half calibrates the threshold"
            )
        return self
