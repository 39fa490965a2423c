"""Compiled sampling on one GPU: FP eager and compiled, our backends eager and compiled, and
torchao's recipes compiled, on DiT-XL/2 (random init), every ratio against FP compiled.

  python bench/compiled_sampling.py --batches 256 --settings fp qdit:4:8:128 qdit:8:8:128@fp8 \
      qdit:4:16:128@int4 ao:fp8row ao:int8 ao:int4 --modes eager default --out results.jsonl

Settings as in sampling_throughput.py (`fp`, method:w:a:g[@backend]), plus `ao:<recipe>`:
torchao's `quantize_` on the same 168 attention and feed-forward linears Q-DiT quantizes
(fp8row, fp8tensor: Float8DynamicActivationFloat8WeightConfig per row / per tensor; int8:
Int8DynamicActivationInt8WeightConfig; int4: Int4WeightOnlyConfig(128); fp8int4:
Float8DynamicActivationInt4WeightConfig). Each setting runs in each `--modes`
(pipeline/models/compile.py: eager, default, reduce-overhead, max-autotune) in one process;
`first_call_s` is the warm-up loop of 2 steps, which holds the compilation. `--explain` first
counts graphs and graph breaks of every setting on a 2-block model of the same width.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from fnmatch import fnmatchcase
from types import SimpleNamespace

import torch
from _common import XL_SCHEDULE, xl_transformer
from gpu_throughput import ceiling
from sampling_throughput import measure, quantized

from pipeline.models.compile import compile_transformer, graph_breaks
from pipeline.quant.targets import DEFAULT_INCLUDE


def torchao_config(recipe: str):
    from torchao.quantization import (
        Float8DynamicActivationFloat8WeightConfig,
        Float8DynamicActivationInt4WeightConfig,
        Int4WeightOnlyConfig,
        Int8DynamicActivationInt8WeightConfig,
        PerRow,
        PerTensor,
    )

    return {
        "fp8row": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()),
        "fp8tensor": lambda: Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor()),
        "int8": lambda: Int8DynamicActivationInt8WeightConfig(),
        "int4": lambda: Int4WeightOnlyConfig(group_size=128),
        "fp8int4": lambda: Float8DynamicActivationInt4WeightConfig(),
    }[recipe]()


def build(base, setting: str, dtype, device):
    """The setting's model on the device in dtype (torchao quantizes the bf16 weights there)."""
    if setting.startswith("ao:"):
        from torchao.quantization import quantize_

        model = copy.deepcopy(base).to(device=device, dtype=dtype)
        targets = lambda m, name: (
            isinstance(m, torch.nn.Linear)
            and any(  # noqa: E731
                fnmatchcase(name, p) for p in DEFAULT_INCLUDE
            )
        )
        quantize_(model, torchao_config(setting[3:]), filter_fn=targets)
        return model
    return quantized(copy.deepcopy(base).to(device), setting, clip=False).to(dtype=dtype)


def example(model, batch: int, dtype, device) -> dict:
    c = model.config
    return {
        "hidden_states": torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, device=device, dtype=dtype),
        "timestep": torch.full((batch,), 500, device=device),
        "class_labels": torch.arange(batch, device=device) % 1000,
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[256])
    p.add_argument("--steps", type=int, nargs="+", default=[10], help="DDIM steps per batch size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--settings", nargs="+", default=["fp", "qdit:4:8:128", "qdit:8:8:128@fp8", "ao:fp8row"])
    p.add_argument("--modes", nargs="+", default=["eager", "default"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--explain", action="store_true", help="count graph breaks on a 2-block model first")
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of the script")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args()
    device, dtype = args.device, getattr(torch, args.dtype)
    lines: list[dict] = []

    def emit(line: dict) -> None:
        lines.append(line)
        print(json.dumps(line), flush=True)  # survives a run cut short
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")

    if args.explain:
        small = xl_transformer(2)
        for setting in args.settings:
            try:
                model = build(small, setting, dtype, device)
                emit({"explain": setting, **graph_breaks(model, **example(model, 2, dtype, device))})
            except Exception as e:  # recorded, the rest still runs
                emit({"explain": setting, "error": repr(e)[:300]})
    base = xl_transformer(args.layers)  # stays on the CPU: only the setting measured is on the GPU
    runs = {
        b: SimpleNamespace(xl_config=True, batch=b, steps=s, repeats=args.repeats, dtype=args.dtype, device=device)
        for b, s in zip(args.batches, args.steps)
    }
    results = []
    for setting in args.settings:
        for mode in args.modes:
            torch._dynamo.reset()
            try:
                model = compile_transformer(build(base, setting, dtype, device), mode)
            except Exception as e:
                emit({"setting": setting, "mode": mode, "error": repr(e)[:300]})
                continue
            for batch, run in runs.items():
                if setting == "fp" and mode == args.modes[0] and device == "cuda":
                    # the bf16 GEMM ceiling of the FP forward, early: a run cut short keeps it
                    emit({"batch": batch, "ceiling": ceiling(model, batch, dtype, device)})
                try:
                    t0 = time.perf_counter()
                    r = measure(run, model, XL_SCHEDULE, 1000, dtype) | {"setting": setting, "mode": mode}
                    r["wall_s"] = round(time.perf_counter() - t0, 1)
                except Exception as e:
                    r = {"batch": batch, "setting": setting, "mode": mode, "error": repr(e)[:300]}
                results.append(r)
                emit(r)
            del model
            if device == "cuda":
                torch.cuda.empty_cache()
    for batch in runs:
        fps = [r for r in results if r.get("batch") == batch and r["setting"] == "fp" and r["mode"] != "eager"]
        ref = fps[0] if fps else None
        if ref is None or "error" in ref:
            continue
        line = {"batch": batch, "against": f"fp {ref['mode']}"}
        for r in results:
            if r.get("batch") == batch and "error" not in r:
                line[f"{r['setting']} {r['mode']}"] = round(r["image_steps_per_s"] / ref["image_steps_per_s"], 3)
        cap = next((x["ceiling"] for x in lines if x.get("batch") == batch and "ceiling" in x), None)
        if cap:
            line["fp compiled vs ceiling"] = round(ref["image_steps_per_s"] / cap["ceiling_image_steps_per_s"], 3)
        emit(line)
    emit({"torch": torch.__version__, "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"})


if __name__ == "__main__":
    main()
