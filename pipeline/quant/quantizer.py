"""Uniform affine quantization: the formulas every other quant module uses. Pure torch.

Asymmetric (default), for a range [lo, hi] widened to contain 0:
    s = (hi - lo) / (2^b - 1),  z = round(-lo / s),  q = clamp(round(x / s) + z, 0, 2^b - 1),
    x^ = (q - z) * s
Symmetric: z = 2^(b-1),  s = max(|lo|, |hi|) / (2^(b-1) - 1).
The range always contains 0, so zero is exact and z fits in b bits. Codes are unsigned
integers in [0, 2^b - 1] in both cases. Stored scales are rounded to float16, the precision
counted in the model size; the arithmetic is done in float32.
"""

from __future__ import annotations

import torch

from pipeline.options import FP_BITS, SUPPORTED_BITS  # noqa: F401  (re-exported: the quantizer's bit widths)
from pipeline.quant.errors import PlanError

_TINY = 1e-8


def check_bits(bits: int, what: str) -> None:
    if bits != FP_BITS and bits not in SUPPORTED_BITS:
        raise PlanError(f"{what}: {bits} bits is not supported; allowed: 2 to 8, or 16 (not quantized)")


def qparams(
    lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool = False, fp16_scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float32; the zero point integral) for ranges lo <= hi of any shape.

    fp16_scale rounds scales to float16, as stored and counted for weights and static ranges;
    dynamic activation scales live only inside one forward and stay float32."""
    lo = torch.clamp(lo.float(), max=0.0)
    hi = torch.clamp(hi.float(), min=0.0)
    # divide by a tensor, not a Python number: CUDA turns division by a scalar into
    # multiplication by its reciprocal, which is not the correctly rounded quotient
    if symmetric:
        half = 2 ** (bits - 1)
        scale = torch.maximum(hi, -lo) / torch.full_like(hi, half - 1)
    else:
        scale = (hi - lo) / torch.full_like(hi, 2**bits - 1)
    # an all-zero range gets a harmless positive scale; float16 holds scales down to ~6e-8
    scale = scale.clamp(min=_TINY)
    if fp16_scale:
        # round up, so (2^b - 1) * s still spans [lo, hi] and no value is clipped by rounding
        s16 = scale.half()
        s16 = torch.where(s16.float() < scale, torch.nextafter(s16, torch.full_like(s16, float("inf"))), s16)
        scale = s16.float().clamp(min=6e-8)
    if symmetric:
        zero = torch.full_like(scale, float(2 ** (bits - 1)))
    else:
        zero = torch.round(-lo / scale).clamp(0, 2**bits - 1)
    return scale, zero


def quantize(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integer codes in [0, 2^b - 1] (uint8)."""
    return torch.clamp(torch.round(x.float() / scale) + zero, 0, 2**bits - 1).to(torch.uint8)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (codes.float() - zero) * scale


def fake_quant(x: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """dequantize(quantize(x)) in float32, with in-place ops to spare memory traffic."""
    q = x.float() / scale
    q.round_().add_(zero).clamp_(0, 2**bits - 1)
    return q.sub_(zero).mul_(scale)


def clip_search(
    x: torch.Tensor, bits: int, symmetric: bool = False, p: float = 2.4, grid: int = 100, min_shrink: float = 0.9
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row range [lo, hi] of x [rows, n] shrunk by the factor in linspace(1, min_shrink, grid)
    that minimises sum |x - x^|^p (the reference's Lp clipping search). Returns (scale, zero)
    of shape [rows, 1]."""
    x = x.float()
    lo0, hi0 = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    best_err = torch.full_like(lo0, float("inf"))
    best_s, best_z = qparams(lo0, hi0, bits, symmetric)
    for factor in torch.linspace(1.0, min_shrink, grid).tolist():
        s, z = qparams(lo0 * factor, hi0 * factor, bits, symmetric)
        err = (fake_quant(x, s, z, bits) - x).abs_().pow_(p).sum(1, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_s = torch.where(better, s, best_s)
        best_z = torch.where(better, z, best_z)
    return best_s, best_z


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB."""
    noise = (x.float() - x_hat.float()).pow(2).sum()
    return float(10 * torch.log10(x.float().pow(2).sum() / noise.clamp(min=1e-30)))
