"""Sampling throughput, FP and fake-quantized: image-steps per second through the DDIM loop.

  python bench/sampling_throughput.py --model data/model --batch 250 --steps 50 \
      --settings fp qdit:8:8:32 qdit:4:8:32                                              # tiny, CPU
  python bench/sampling_throughput.py --xl-config --batch 256 --steps 10 --dtype bfloat16 \
      --settings fp qdit:8:8:128 qdit:4:8:128                                            # GPU

A setting is `fp` or method:weight_bits:act_bits:group_size (rtn ignores the group size),
optionally followed by @backend (fake, int8, fp8, int4) and +all (quantize every Linear).
All settings run in one process on the same inputs, so their ratio to FP is measured in one
run. --xl-config builds a randomly initialised DiT-XL/2 256 transformer (diffusers config),
which costs the same per step as the real weights; quantization there is round-to-nearest
without the clipping search (speed does not depend on the values). Guidance 1.0 (one forward
per image-step); with classifier-free guidance every image-step costs two forwards.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time

import torch
from _common import XL_SCHEDULE, xl_transformer

from pipeline.sampling import denoise, make_scheduler
from pipeline.seeds import generators, initial_noise


def build(args):
    if args.xl_config:
        return xl_transformer(), dict(XL_SCHEDULE), 1000
    from pipeline.models.loader import load_fp_model

    fp = load_fp_model(args.model)
    return fp.transformer, fp.scheduler_config, fp.num_classes


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="data/model")
    p.add_argument("--xl-config", action="store_true")
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--settings", nargs="+", default=["fp"])
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    base, sched_cfg, num_classes = build(args)
    base = base.to(args.device)
    fp_rate = None
    for setting in args.settings:
        model = quantized(copy.deepcopy(base), setting, clip=not args.xl_config).to(dtype=dtype)
        result = measure(args, model, sched_cfg, num_classes, dtype) | {"setting": setting}
        fp_rate = result["image_steps_per_s"] if setting == "fp" else fp_rate
        if fp_rate:
            result["vs_fp"] = round(result["image_steps_per_s"] / fp_rate, 3)
        print(json.dumps(result), flush=True)
        del model
        if args.device == "cuda":
            torch.cuda.empty_cache()


def quantized(model, setting: str, clip: bool):
    """`fp`, or method:weight_bits:act_bits:group_size, then optionally @backend (default fake)
    and +all (every Linear of the transformer, adaLN and embedders too, instead of Q-DiT's
    attention and feed-forward linears)."""
    if setting == "fp":
        return model
    from pipeline.quant.apply import linear_in_features, quantize
    from pipeline.quant.backends import use_backend
    from pipeline.quant.plan import build_plan
    from pipeline.quant.targets import DEFAULT_INCLUDE

    setting, _, scope = setting.partition("+")
    setting, _, backend = setting.partition("@")
    method, wb, ab, g = setting.split(":")
    plan = build_plan(
        linear_in_features(model),
        method=method,
        include=("*",) if scope == "all" else DEFAULT_INCLUDE,
        exclude=[],
        weight_bits=int(wb),
        group_size=int(g),
        weight_symmetric=False,
        clip_search=clip,
        gptq=False,
        act_bits=int(ab),
        act_mode="dynamic" if method == "rtn" else "auto",
        act_group_size=None,
        act_symmetric=False,
        attn_bits=16,
    )
    return use_backend(quantize(model, plan), backend or "fake")


def measure(args, model, sched_cfg, num_classes, dtype) -> dict:
    c = model.config
    index = torch.arange(args.batch)
    noise = initial_noise(generators(0, index), (c.in_channels, c.sample_size, c.sample_size), torch.float32)
    noise = noise.to(args.device, dtype)
    labels = (index % num_classes).to(args.device)

    def once(steps: int) -> float:
        sched = make_scheduler("ddim", sched_cfg, steps)
        if args.device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        denoise(model, sched, noise, labels, guidance_scale=1.0, null_label=num_classes)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    first_call = once(2)  # warm-up; holds the compilation of a compiled model
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = sorted(once(args.steps) for _ in range(args.repeats))
    median = times[len(times) // 2]
    result = {
        "model": "DiT-XL/2-config (random init)" if args.xl_config else args.model,
        "device": torch.cuda.get_device_name()
        if args.device == "cuda"
        else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": args.dtype,
        "batch": args.batch,
        "steps": args.steps,
        "repeats": args.repeats,
        "median_s": round(median, 4),
        "image_steps_per_s": round(args.batch * args.steps / median, 1),
        "spread_s": [round(t, 4) for t in times],
        "first_call_s": round(first_call, 2),
        "torch": torch.__version__,
    }
    if args.device == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


if __name__ == "__main__":
    main()
