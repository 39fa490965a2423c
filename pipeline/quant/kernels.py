"""Triton kernels for the fake-quant forward on CUDA, bit-identical to the reference path.

The eager reference (activation._dynamic_reference, granularity.dequantize_weight) makes ~10
passes over an activation; these kernels read it once and write it once. They repeat the
reference's float32 operations in the same order with IEEE division (div_rn) and
round-half-to-even (_rint), so results match bit for bit (tests/quant/test_kernels.py on a GPU,
and on a CPU in Triton's interpreter, TRITON_INTERPRET=1; bench/quant_kernel_check.py at
DiT-XL/2 sizes). Set QDIT_KERNELS=0 to use the reference path everywhere.
"""

from __future__ import annotations

import os

import torch

try:  # Triton ships with CUDA builds of torch; CPU machines have no use for it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

ENABLED = os.environ.get("QDIT_KERNELS", "1") != "0"


def available(t: torch.Tensor) -> bool:
    return ENABLED and triton is not None and t.is_cuda


if triton is not None:

    @triton.jit
    def _rint(v):
        """Round half to even, exactly for |v| < 2^22 (every quotient here is within the code
        range): floor(v + 1/2), one down at ties that land on an odd number. Not libdevice's
        rint, which Triton's interpreter lacks."""
        r = tl.floor(v + 0.5)
        odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
        return tl.where(((r - v) == 0.5) & odd, r - 1.0, r)

    @triton.jit
    def _act_kernel(
        x_ptr,
        y_ptr,
        n_groups,
        G,
        BLOCK_G: tl.constexpr,
        ROWS: tl.constexpr,
        QMAX: tl.constexpr,
        HALF: tl.constexpr,
        SYM: tl.constexpr,
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK_G)
        mask = (rows[:, None] < n_groups) & (cols[None, :] < G)
        offs = rows[:, None].to(tl.int64) * G + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lo = tl.minimum(tl.min(tl.where(mask, x, float("inf")), axis=1), 0.0)
        hi = tl.maximum(tl.max(tl.where(mask, x, float("-inf")), axis=1), 0.0)
        if SYM:
            s = tl.maximum(tl.math.div_rn(tl.maximum(hi, -lo), HALF - 1.0), 1e-8)
            z = tl.full(s.shape, HALF, tl.float32)
        else:
            s = tl.maximum(tl.math.div_rn(hi - lo, QMAX * 1.0), 1e-8)
            z = tl.minimum(tl.maximum(_rint(tl.math.div_rn(-lo, s)), 0.0), QMAX * 1.0)
        q = _rint(tl.math.div_rn(x, s[:, None])) + z[:, None]
        q = tl.minimum(tl.maximum(q, 0.0), QMAX * 1.0)
        y = (q - z[:, None]) * s[:, None]
        tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _dequant_kernel(c_ptr, s_ptr, z_ptr, y_ptr, n, IN, ROW_STRIDE, GSIZE, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        g = (offs // IN) * ROW_STRIDE + (offs % IN) // GSIZE
        c = tl.load(c_ptr + offs, mask=mask, other=0).to(tl.float32)
        s = tl.load(s_ptr + g, mask=mask, other=1.0)
        z = tl.load(z_ptr + g, mask=mask, other=0.0)
        tl.store(y_ptr + offs, ((c - z) * s).to(y_ptr.dtype.element_ty), mask=mask)


def dynamic_fake_quant(x: torch.Tensor, bits: int, g: int, symmetric: bool) -> torch.Tensor:
    x = x.contiguous()
    y = torch.empty_like(x)
    n_groups = x.numel() // g
    block_g = triton.next_power_of_2(g)
    rows = max(1, min(64, 4096 // block_g))
    grid = (triton.cdiv(n_groups, rows),)
    _act_kernel[grid](
        x, y, n_groups, g, BLOCK_G=block_g, ROWS=rows, QMAX=2**bits - 1, HALF=2 ** (bits - 1), SYM=symmetric
    )
    return y


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    out, inp = codes.shape
    y = torch.empty(out, inp, dtype=dtype, device=codes.device)
    per_tensor = scale.shape[0] == 1 and out != 1
    gsize = inp if per_tensor else inp // scale.shape[1]
    row_stride = 0 if per_tensor else scale.shape[1]
    n = codes.numel()
    block = 1024
    _dequant_kernel[(triton.cdiv(n, block),)](
        codes.contiguous(), scale.contiguous(), zero.contiguous(), y, n, inp, row_stride, gsize, BLOCK=block
    )
    return y
