"""How a QuantLinear computes: `fake` (dequantize, then a float GEMM) or `int8` (integer GEMM).

int8 computes y = x^ W^T from the integer codes themselves. Along the input dimension the
layer splits into blocks within which both the activation and the weight share one scale and
zero point (block = the smaller of the two group sizes). Per block j, with codes centred into
int8 (a = q_x - c, b = q_w - c, c = 2^(bits-1)) and centred zero points (alpha = z_x - c,
beta = z_w - c):

    sum_k (q_x - z_x)(q_w - z_w) = sum a b - beta sum a - alpha sum b + n_j alpha beta

The first sum is one int8 x int8 -> int32 GEMM (torch._int_mm); the rest are row and column
sums. The integer result is exact, so y = sum_j s_x s_w T_j + bias differs from the fake path
only by the float rounding of the fake path's dequantized operands and GEMM. torch._int_mm
runs on CPUs and on CUDA (M > 16, block and output sizes multiples of 8).

This is the arithmetic of an integer kernel, one GEMM per block, not yet a fast one: a fused
kernel that applies the block scales inside the K loop is what makes it pay on GPUs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.errors import UserError
from pipeline.quant.activation import dynamic_qparams
from pipeline.quant.buffers import Float32Buffers
from pipeline.quant.quantizer import FP_BITS, quantize

BACKENDS = ("fake", "int8")


class IntGemm(Float32Buffers):
    """The weight side of one layer, prepared once: int8 blocks, their column sums, centred
    zero points and scales per block. Buffers are not saved (rebuilt from the codes)."""

    _float32_buffers = ("w_scale", "w_zero_c")

    def __init__(self, layer: nn.Module, block: int):
        super().__init__()
        n, k = layer.out_features, layer.in_features
        self.block, self.blocks = block, k // block
        c_w = 2 ** (layer.weight_bits - 1)
        b = (layer.qweight.to(torch.int16) - c_w).to(torch.int8)  # [N, K]
        per_block = k // layer.w_scale.shape[1] // block  # weight groups span whole blocks
        w_scale = layer.w_scale.repeat_interleave(per_block, dim=1).expand(n, -1)
        w_zero = layer.w_zero.repeat_interleave(per_block, dim=1).expand(n, -1)
        blocks = b.reshape(n, self.blocks, block)
        self.register_buffer("b_t", blocks.permute(1, 2, 0).contiguous(), persistent=False)  # [J, block, N]
        self.register_buffer("b_sum", blocks.to(torch.int32).sum(-1).T.contiguous(), persistent=False)  # [J, N]
        self.register_buffer("w_scale", w_scale.T.contiguous().float(), persistent=False)  # [J, N]
        self.register_buffer("w_zero_c", (w_zero - c_w).T.contiguous().float(), persistent=False)  # [J, N]

    def act_codes(self, x: torch.Tensor, act) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Codes [M, K] and per-block scale and zero point [M, J] of x [..., K] (M rows), as the
        fake path quantizes."""
        spec = act.spec
        x2 = x.reshape(-1, x.shape[-1]).float()
        m, k = x2.shape
        if spec.mode == "dynamic":
            g = spec.group_size or k
            xg, s, z = dynamic_qparams(x2, spec.bits, g, spec.symmetric)
            q = quantize(xg, s, z, spec.bits).reshape(m, k)
            per_block = g // self.block
            return q, s[..., 0].repeat_interleave(per_block, 1), z[..., 0].repeat_interleave(per_block, 1)
        s, z = act.static_qparams(x)  # one range per sample (its timestep) or for all
        s, z = (v.expand(*x.shape[:-1], 1).reshape(m, 1) for v in (s, z))
        return quantize(x2, s, z, spec.bits), s.expand(m, self.blocks), z.expand(m, self.blocks)

    def forward(self, x: torch.Tensor, act, bias: torch.Tensor | None) -> torch.Tensor:
        shape = x.shape
        q, s_x, z_x = self.act_codes(x, act)
        m = len(q)
        c_x = 2 ** (act.spec.bits - 1)
        a = (q.to(torch.int16) - c_x).to(torch.int8).reshape(m, self.blocks, self.block)
        a_sum = a.to(torch.int32).sum(-1)  # [M, J]
        alpha = (z_x - c_x).round().to(torch.int32)  # zero points are integers
        beta = self.w_zero_c.round().to(torch.int32)
        y = torch.zeros(m, self.b_t.shape[2], dtype=torch.float32, device=x.device)
        for j in range(self.blocks):
            t = torch._int_mm(a[:, j].contiguous(), self.b_t[j])
            t -= a_sum[:, j, None] * beta[j][None, :]
            t -= alpha[:, j, None] * self.b_sum[j][None, :]
            t += self.block * alpha[:, j, None] * beta[j][None, :]
            y += (s_x[:, j, None] * self.w_scale[j][None, :]) * t.float()
        if bias is not None:
            y += bias.float()
        return y.reshape(*shape[:-1], -1).to(x.dtype)


def _block(layer, name: str) -> int:
    """The largest block in which activation and weight each share one scale, or a message."""
    k = layer.in_features
    spec = layer.act.spec
    if not spec.active or spec.bits > 8:
        raise UserError(f"quant.backend = 'int8' needs activations of at most 8 bits; layer {name!r} has "
                        f"A{spec.bits if spec.active else FP_BITS} (use backend 'fake', or quant.act.bits <= 8)")
    g_w = k // layer.w_scale.shape[1]
    g_a = (spec.group_size or k) if spec.mode == "dynamic" else k
    small, large = sorted((g_w, g_a))
    if large % small:
        raise UserError(f"quant.backend = 'int8': layer {name!r} has weight groups of {g_w} and activation "
                        f"groups of {g_a} channels; one must divide the other")
    return small


def use_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every quantized linear of `model` to `backend`, in place."""
    from pipeline.quant.linear import QuantLinear

    if backend not in BACKENDS:
        raise UserError(f"quant.backend = {backend!r}; allowed: {', '.join(BACKENDS)}")
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear) and m.weight_bits != FP_BITS:
            m.int_gemm = IntGemm(m, _block(m, name)) if backend == "int8" else None
    return model
