"""GPU check of the Triton fake-quant kernels against the eager reference path.

  python bench/quant_kernel_check.py     # needs CUDA and Triton

For DiT-XL/2 shapes (batch 256 x 256 tokens; 1152 and 4608 channels; g = 128, 96 and the
whole token), bf16: how many elements differ from the reference (must be 0), and the time of
each path (median of triton.testing.do_bench), with the kernel's achieved bandwidth.
"""

from __future__ import annotations

import json

import torch

from pipeline.quant import kernels
from pipeline.quant.activation import _dynamic_reference
from pipeline.quant.granularity import Granularity, dequantize_weight, quantize_weight


def main() -> None:
    from triton.testing import do_bench

    torch.manual_seed(0)
    for c, g, bits, sym in [
        (1152, 128, 8, False),
        (1152, 128, 4, False),
        (4608, 128, 8, False),
        (1152, 96, 8, False),
        (1152, None, 8, False),
        (1152, 128, 8, True),
    ]:
        x = (torch.randn(256 * 256, c, device="cuda") * torch.rand(c, device="cuda") * 4).to(torch.bfloat16)
        x[:, 7] *= 30  # an outlier channel
        gg = g or c
        ref = _dynamic_reference(x, bits, gg, sym)
        fast = kernels.dynamic_fake_quant(x, bits, gg, sym)
        t_ref = do_bench(lambda: _dynamic_reference(x, bits, gg, sym), return_mode="median")
        t_fast = do_bench(lambda: kernels.dynamic_fake_quant(x, bits, gg, sym), return_mode="median")
        print(
            json.dumps(
                {
                    "kernel": "activation",
                    "shape": list(x.shape),
                    "group": g,
                    "bits": bits,
                    "symmetric": sym,
                    "mismatched": int((fast != ref).sum()),
                    "elements": x.numel(),
                    "eager_ms": round(t_ref, 3),
                    "triton_ms": round(t_fast, 3),
                    "triton_GBps": round(2 * x.numel() * 2 / 1e9 / (t_fast / 1e3), 1),
                }
            ),
            flush=True,
        )
    for out, inp, gran in [
        (1152, 1152, Granularity("group", 128)),
        (4608, 1152, Granularity("group", 64)),
        (1152, 4608, Granularity("channel")),
        (1152, 1152, Granularity("tensor")),
    ]:
        w = torch.randn(out, inp, device="cuda") * 0.02
        codes, s, z = quantize_weight(w, 4, gran)
        ref = dequantize_weight(codes, s, z).to(torch.bfloat16)
        fast = kernels.dequantize_weight(codes, s, z, torch.bfloat16)
        t_ref = do_bench(lambda: dequantize_weight(codes, s, z).to(torch.bfloat16), return_mode="median")
        t_fast = do_bench(lambda: kernels.dequantize_weight(codes, s, z, torch.bfloat16), return_mode="median")
        print(
            json.dumps(
                {
                    "kernel": "weight dequant",
                    "shape": [out, inp],
                    "granularity": gran.kind,
                    "mismatched": int((fast != ref).sum()),
                    "eager_ms": round(t_ref, 3),
                    "triton_ms": round(t_fast, 3),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
