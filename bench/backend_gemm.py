"""Per-layer time of each backend on DiT-XL/2's linear shapes, against the bf16 and FP8 ceilings.

  python bench/backend_gemm.py --batches 256 32 --out bench/results/gpu_backend_gemm.jsonl

For every distinct Linear shape of a DiT-XL/2 block (q/k/v/out 1152 -> 1152, fc1 1152 -> 4608,
fc2 4608 -> 1152 at batch x 256 tokens; adaLN 1152 -> 6912 at batch rows), one QuantLinear
(uniform g = 128, dynamic per-token activations in groups of 128) is timed whole, as the
sampler calls it: activation quantization, weight handling and GEMM, for every backend that
runs it. In the same run, the two ceilings of that shape: cuBLAS bf16 F.linear (bias included)
and torch._scaled_mm on operands already in FP8 (row-wise scales), each the GEMM alone.
Median of 20 by CUDA events after 3 warm-ups (bench/gpu_throughput.cuda_ms).
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn as nn
import torch.nn.functional as F
from gpu_throughput import cuda_ms

from pipeline.quant.activation import ActSpec
from pipeline.quant.backends import use_backend
from pipeline.quant.granularity import Granularity
from pipeline.quant.linear import QuantLinear
from pipeline.quant.lowbit_kernels import fp8_rows_reference

SHAPES = {
    "attn q/k/v/out": (1152, 1152, 256),
    "ff fc1": (1152, 4608, 256),
    "ff fc2": (4608, 1152, 256),
    "adaLN": (1152, 6912, 1),
}  # in, out, rows per image
SETTINGS = {  # name: weight bits, activation bits, backends
    "W8A8": (8, 8, ("fake", "int8", "fp8")),
    "W4A8": (4, 8, ("fake", "int4")),
    "W4A16": (4, 16, ("fake", "int4")),
}


def layer(k: int, n: int, wbits: int, abits: int, backend: str, device, dtype) -> nn.Module:
    torch.manual_seed(0)
    lin = nn.Linear(k, n).to(device)
    q = QuantLinear.from_linear(
        lin, wbits, Granularity("group", 128), ActSpec(abits, "dynamic" if abits < 16 else "none", 128)
    )
    return use_backend(nn.Sequential(q), backend).to(dtype=dtype)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batches", type=int, nargs="+", default=[256, 32])
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    p.add_argument("--device", default="cuda", help="cuda; cpu only for a smoke run of the script")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("backend_gemm.py needs a CUDA GPU (--device cpu only smoke-tests the script)")
    device, dtype = args.device, getattr(torch, args.dtype)
    rows = []
    for batch in args.batches:
        for shape, (k, n, per_image) in SHAPES.items():
            m = batch * per_image
            x = torch.randn(m, k, device=device, dtype=dtype)
            w = torch.randn(n, k, device=device, dtype=dtype) / k**0.5
            b = torch.randn(n, device=device, dtype=dtype)
            a8, sa = fp8_rows_reference(x)
            w8, sb = fp8_rows_reference(w)
            sb = sb.T.contiguous()
            flop = 2.0 * m * k * n
            ceil = {
                "bf16": cuda_ms(lambda: F.linear(x, w, b)),
                "fp8": cuda_ms(lambda: torch._scaled_mm(a8, w8.t(), scale_a=sa, scale_b=sb, out_dtype=dtype)),
            }
            base = {"batch": batch, "layer": shape, "M": m, "K": k, "N": n, "dtype": args.dtype}
            for name, ms in ceil.items():
                rows.append(base | {"what": f"ceiling {name}", "ms": round(ms, 4), "tflops": round(flop / ms / 1e9, 1)})
                print(json.dumps(rows[-1]), flush=True)
            for setting, (wbits, abits, backends) in SETTINGS.items():
                for backend in backends:
                    try:
                        mod = layer(k, n, wbits, abits, backend, device, dtype)
                        with torch.no_grad():
                            ms = cuda_ms(lambda: mod(x))
                    except Exception as e:  # recorded, the rest still runs
                        rows.append(base | {"what": f"{setting} {backend}", "error": repr(e)[:300]})
                        print(json.dumps(rows[-1]), flush=True)
                        continue
                    rows.append(
                        base
                        | {
                            "what": f"{setting} {backend}",
                            "ms": round(ms, 4),
                            "vs_bf16_ceiling": round(ceil["bf16"] / ms, 3),
                            "vs_fp8_ceiling": round(ceil["fp8"] / ms, 3),
                        }
                    )
                    print(json.dumps(rows[-1]), flush=True)
    rows.append({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__})
    if args.out:
        with open(args.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
