"""GPTQ weight rounding (Frantar et al., 2023) that honours each layer's own group size.

Columns are quantized left to right; each column's rounding error is spread over the columns
not yet quantized, weighted by the inverse Hessian H = 2 X^T X of the layer's inputs. A
group's scale and zero point are fixed when its first column is reached, from the weights as
updated so far. Blocks are whole multiples of the group size, so a group never straddles a
block and its parameters always see every update before it (the reference implementation
computes them from partly stale weights when they do).
"""

from __future__ import annotations

import torch

from pipeline.quant.granularity import Granularity
from pipeline.quant.quantizer import clip_search, fake_quant, qparams, quantize


class HessianAccumulator:
    """Running H = 2/n sum x x^T over the rows of a Linear's inputs."""

    def __init__(self, in_features: int, device=None):
        self.h = torch.zeros(in_features, in_features, dtype=torch.float64, device=device)
        self.n = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).double()
        self.h += x.T @ x
        self.n += x.shape[0]

    def hessian(self) -> torch.Tensor:
        return (2.0 / max(self.n, 1)) * self.h


def _group_params(w: torch.Tensor, bits: int, symmetric: bool, clip: bool):
    if clip:
        return clip_search(w, bits, symmetric)
    return qparams(w.amin(1, keepdim=True), w.amax(1, keepdim=True), bits, symmetric)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    bits: int,
    granularity: Granularity,
    symmetric: bool = False,
    clip: bool = False,
    block_size: int = 128,
    damp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (codes uint8 [out, in], scale [rows, G], zero [rows, G]) as quantize_weight does."""
    if granularity.kind == "tensor":
        raise ValueError("GPTQ needs per-channel or per-group weights, not per-tensor")
    w = weight.detach().double().clone()
    out, cols = w.shape
    g = granularity.group_size if granularity.kind == "group" else cols
    h = hessian.double().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(cols, dtype=h.dtype, device=h.device)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)

    block = min(cols, g * max(1, block_size // g))  # whole groups per block
    codes = torch.zeros(out, cols, dtype=torch.uint8, device=w.device)
    scales = torch.zeros(out, cols // g, dtype=torch.float32, device=w.device)
    zeros = torch.zeros_like(scales)
    for b0 in range(0, cols, block):
        b1 = min(b0 + block, cols)
        w1 = w[:, b0:b1].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = b0 + i
            if col % g == 0:
                s, z = _group_params(w1[:, i : i + g].float(), bits, symmetric, clip)
                scales[:, col // g], zeros[:, col // g] = s[:, 0], z[:, 0]
            s, z = scales[:, col // g : col // g + 1], zeros[:, col // g : col // g + 1]
            wc = w1[:, i : i + 1].float()
            codes[:, col] = quantize(wc, s, z, bits)[:, 0]
            q = fake_quant(wc, s, z, bits).double()
            e = (w1[:, i : i + 1] - q) / hinv1[i, i]
            w1[:, i:] -= e @ hinv1[i : i + 1, i:]
            err1[:, i : i + 1] = e
        w[:, b1:] -= err1 @ hinv[b0:b1, b1:]
    return codes, scales, zeros
