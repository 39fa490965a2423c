"""DiT-XL/2 on one GPU: FP and fake-quant sampling throughput against the bf16 GEMM ceiling.

  python bench/gpu_throughput.py --batches 256 32 --settings fp qdit:8:8:128 qdit:4:8:128 \
      --out bench/results/gpu_throughput.jsonl
  python bench/gpu_throughput.py --settings fp qdit:8:8:128@fp8 qdit:4:16:128@int4   # real backends

Settings as in sampling_throughput.py (@backend picks fake, int8, fp8 or int4; +all quantizes
every Linear). Each setting also reports `weights_gib`, the GPU memory its model holds before
sampling.

One process, so every ratio is measured in one run. For each batch: each setting's
image-steps/s through the DDIM loop (guidance 1.0, one forward per image-step) and its peak GPU
memory (sampling_throughput.measure), then the ceiling of the same forward: its matrix products
alone - every Linear at the shape it runs at (cuBLAS bf16, bias included) and every attention
(F.scaled_dot_product_attention) - timed back to back. The ceiling leaves out the norms,
modulation, activation functions and the scheduler: it is what a forward made only of its
GEMMs would reach. Last, the dense bf16 rate of an 8192^3 product, the hardware's peak.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from _common import XL_SCHEDULE, xl_transformer
from sampling_throughput import measure, quantized


def cuda_ms(fn, warmup: int = 3, reps: int = 20) -> float:
    """Median time of fn in ms, by CUDA events (by the clock on a CPU smoke run)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def forward_ops(model: nn.Module, batch: int, dtype, device) -> tuple[list[tuple], list[tuple]]:
    """(M, in, out, bias) of every Linear call and the q shape of every attention call of one
    forward at this batch."""
    linears, attentions = [], []
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, inp: linears.append(
                (inp[0].numel() // mod.in_features, mod.in_features, mod.out_features, mod.bias is not None)
            )
        )
        for m in model.modules()
        if isinstance(m, nn.Linear)
    ]
    sdpa = F.scaled_dot_product_attention

    def recording(q, k, v, *a, **kw):
        attentions.append(tuple(q.shape))
        return sdpa(q, k, v, *a, **kw)

    F.scaled_dot_product_attention = recording
    try:
        c = model.config
        x = torch.randn(batch, c.in_channels, c.sample_size, c.sample_size, device=device, dtype=dtype)
        with torch.no_grad():
            model(
                x,
                timestep=torch.full((batch,), 500, device=device),
                class_labels=torch.zeros(batch, dtype=torch.long, device=device),
            )
    finally:
        F.scaled_dot_product_attention = sdpa
        for h in hooks:
            h.remove()
    return linears, attentions


def ceiling(model: nn.Module, batch: int, dtype, device) -> dict:
    linears, attentions = forward_ops(model, batch, dtype, device)
    total_ms, flops = 0.0, 0.0
    cache: dict[tuple, float] = {}
    for op in linears:
        if op not in cache:
            m, k, n, bias = op
            x = torch.randn(m, k, device=device, dtype=dtype)
            w = torch.randn(n, k, device=device, dtype=dtype)
            b = torch.randn(n, device=device, dtype=dtype) if bias else None
            cache[op] = cuda_ms(lambda: F.linear(x, w, b))
        total_ms += cache[op]
        flops += 2.0 * op[0] * op[1] * op[2]
    for shape in attentions:
        if shape not in cache:
            q, k, v = (torch.randn(shape, device=device, dtype=dtype) for _ in range(3))
            cache[shape] = cuda_ms(lambda: F.scaled_dot_product_attention(q, k, v))
        total_ms += cache[shape]
        b, h, t, d = shape
        flops += 4.0 * b * h * t * t * d  # QK^T and PV
    return {
        "gemm_ms_per_forward": round(total_ms, 3),
        "linear_calls": len(linears),
        "attention_calls": len(attentions),
        "gflops_per_image_step": round(flops / batch / 1e9, 2),
        "gemm_tflops": round(flops / total_ms / 1e9, 1),
        "ceiling_image_steps_per_s": round(batch / (total_ms / 1e3), 1),
    }


def dense_peak(dtype, device, n: int = 8192) -> float:
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    return round(2 * n**3 / cuda_ms(lambda: a @ b, warmup=5, reps=10) / 1e9, 1)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[256, 32])
    p.add_argument("--steps", type=int, nargs="+", default=[10, 20], help="DDIM steps per batch size")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--settings", nargs="+", default=["fp", "qdit:8:8:128", "qdit:4:8:128"])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--layers", type=int, default=28, help="transformer blocks (28 = DiT-XL/2; fewer for a smoke run)")
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of the script")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    args = p.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py needs a CUDA GPU (--device cpu only smoke-tests the script)")
    dtype = getattr(torch, args.dtype)
    base = xl_transformer(args.layers)  # stays on the CPU: only the setting measured is on the GPU
    runs = {
        batch: SimpleNamespace(
            xl_config=True, batch=batch, steps=steps, repeats=args.repeats, dtype=args.dtype, device=device
        )
        for batch, steps in zip(args.batches, args.steps)
    }
    results, ceilings = [], {}
    for setting in args.settings:
        try:
            model = quantized(copy.deepcopy(base).to(device), setting, clip=False).to(dtype=dtype)
        except Exception as e:  # e.g. a backend this GPU cannot run: recorded, the rest still runs
            results.extend({"batch": batch, "setting": setting, "error": repr(e)[:300]} for batch in runs)
            continue
        # what the weights hold on the GPU: the base model stays on the CPU
        weights = {"weights_gib": round(torch.cuda.memory_allocated() / 2**30, 3)} if device == "cuda" else {}
        for batch, run in runs.items():
            if setting == "fp":
                ceilings[batch] = ceiling(model, batch, dtype, device)
            try:
                results.append(measure(run, model, XL_SCHEDULE, 1000, dtype) | {"setting": setting} | weights)
            except Exception as e:  # recorded, the rest still runs
                results.append({"batch": batch, "setting": setting, "error": repr(e)[:300]})
            print("measured:", json.dumps(results[-1]), flush=True)  # survives a run cut short
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
    lines = []
    for batch in runs:
        fp = next((r for r in results if r["batch"] == batch and r["setting"] == "fp"), None)
        for r in (r for r in results if r["batch"] == batch):
            if "error" in r:
                lines.append(r)
                continue
            if fp:
                r["vs_fp"] = round(r["image_steps_per_s"] / fp["image_steps_per_s"], 3)
            if batch in ceilings:
                r["vs_ceiling"] = round(r["image_steps_per_s"] / ceilings[batch]["ceiling_image_steps_per_s"], 3)
            lines.append(r)
        lines.append({"batch": batch, "dtype": args.dtype, "ceiling": ceilings.get(batch)})
    if device == "cuda":
        lines.append(
            {
                "dense_8192_tflops": dense_peak(dtype, device),
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
            }
        )
    for line in lines:
        print(json.dumps(line), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(line) + "\n" for line in lines)


if __name__ == "__main__":
    main()
