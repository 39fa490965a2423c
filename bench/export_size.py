"""Bytes of the quantized checkpoint (quantized.safetensors) against FP16, on DiT-XL/2.

  python bench/export_size.py --settings 8:128 4:128 --out bench/results/export_size.json

A DiT-XL/2 256 config transformer (random weights: sizes do not depend on values), quantized
by round-to-nearest with Q-DiT's uniform plan (the default include list: attention q/k/v/out and
both feed-forward linears of every block, 168 layers) and saved as the `quantize` stage saves
it (--all: every Linear of the transformer, adaLN modulation and embedders included).
"quantized layers" counts only those layers' tensors (codes, scales, zero points, biases)
against the same layers in FP16; "transformer" adds every other parameter at FP16 (embedders,
adaLN modulation, final layer), which the checkpoint of the `model` stage holds.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from _common import xl_transformer
from safetensors.torch import save_file

from pipeline.quant.apply import linear_in_features, quantize
from pipeline.quant.checkpoint import quant_state
from pipeline.quant.plan import build_plan
from pipeline.quant.targets import DEFAULT_INCLUDE


def file_bytes(state: dict) -> int:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "state.safetensors"
        save_file(state, str(path))
        return path.stat().st_size


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--settings", nargs="+", default=["8:128", "4:128"], help="weight_bits:group_size")
    p.add_argument("--all", action="store_true", help="quantize every Linear (adaLN, embedders, final layer too)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    base = xl_transformer()
    fp16 = {k: v.half().contiguous() for k, v in base.state_dict().items()}
    total_fp16 = file_bytes(fp16)
    rows = []
    for setting in args.settings:
        bits, g = map(int, setting.split(":"))
        model = xl_transformer()
        plan = build_plan(
            linear_in_features(model),
            method="qdit",
            include=("*",) if args.all else DEFAULT_INCLUDE,
            exclude=[],
            weight_bits=bits,
            group_size=g,
            weight_symmetric=False,
            clip_search=False,
            gptq=False,
            act_bits=8,
            act_mode="auto",
            act_group_size=None,
            act_symmetric=False,
            attn_bits=16,
        )
        layers_fp16 = {k: v for k, v in fp16.items() if k.rsplit(".", 1)[0] in plan.layers}
        with torch.no_grad():
            state = quant_state(quantize(model, plan), plan)
        q_bytes, l_bytes = file_bytes(state), file_bytes(layers_fp16)
        rest = total_fp16 - l_bytes
        rows.append(
            {
                "setting": f"W{bits} g{g}" + (" every Linear" if args.all else ""),
                "layers": len(plan.layers),
                "quantized_layers_mb": round(q_bytes / 1e6, 1),
                "same_layers_fp16_mb": round(l_bytes / 1e6, 1),
                "layers_ratio": round(q_bytes / l_bytes, 3),
                "transformer_mb": round((q_bytes + rest) / 1e6, 1),
                "transformer_fp16_mb": round(total_fp16 / 1e6, 1),
                "transformer_ratio": round((q_bytes + rest) / total_fp16, 3),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
