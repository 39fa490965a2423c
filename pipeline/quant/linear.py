"""QuantLinear: an nn.Linear replacement that holds integer weight codes, not float weights.

Buffers: `qweight` (uint8 codes [out, in]), `w_scale`, `w_zero` ([out, G]: per-tensor G = 1
with one row, per-channel G = 1, per-group G = in / g), `bias` in the model's dtype. The
forward fake-quantizes the input (activation.py), dequantizes the weight, and runs F.linear:
exactly x^ W^T + b with x^ and W^ from the formulas in quantizer.py.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.quant import kernels
from pipeline.quant.activation import ActQuantizer, ActSpec, TimestepContext
from pipeline.quant.buffers import KeepDtypeBuffers
from pipeline.quant.granularity import Granularity, dequantize_weight, quantize_weight
from pipeline.quant.packing import unpack_int4
from pipeline.quant.quantizer import FP_BITS


class QuantLinear(KeepDtypeBuffers):
    _keep_dtype = ("w_scale", "w_zero")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool,
        weight_bits: int,
        granularity: Granularity,
        act: ActQuantizer,
        dtype: torch.dtype = torch.float32,
        weight_symmetric: bool = False,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight_bits = weight_bits
        self.weight_symmetric = weight_symmetric  # symmetric zero points are implicit (2^(b-1))
        self.granularity = granularity
        self.act = act
        if weight_bits == FP_BITS:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        else:
            groups = granularity.groups(in_features)
            rows = 1 if granularity.kind == "tensor" else out_features
            self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.uint8))
            self.register_buffer("w_scale", torch.ones(rows, groups))
            self.register_buffer("w_zero", torch.zeros(rows, groups))
        if bias:
            self.register_buffer("bias", torch.zeros(out_features, dtype=dtype))
        else:
            self.bias = None
        self.gemm = None  # backends.use_backend: a real low-bit GEMM instead of dequantize + float GEMM

    @classmethod
    def from_linear(
        cls,
        linear: nn.Linear,
        weight_bits: int,
        granularity: Granularity,
        act_spec: ActSpec,
        act_ranges=None,
        ctx: TimestepContext | None = None,
        symmetric: bool = False,
        clip: bool = False,
        codes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> QuantLinear:
        """Round-to-nearest from the float weight, or take (codes, scale, zero) given (GPTQ)."""
        w = linear.weight.detach()
        q = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            weight_bits,
            granularity,
            ActQuantizer.from_ranges(act_spec, act_ranges, ctx),
            dtype=w.dtype,
            weight_symmetric=symmetric,
        )
        q.to(w.device)
        if weight_bits == FP_BITS:
            q.weight.data.copy_(w)
        else:
            c, s, z = codes if codes is not None else quantize_weight(w, weight_bits, granularity, symmetric, clip)
            q.qweight.copy_(c)
            q.w_scale.copy_(s)
            q.w_zero.copy_(z)
        if linear.bias is not None:
            q.bias.copy_(linear.bias.detach())
        return q

    def codes(self) -> torch.Tensor:
        """The uint8 weight codes [out, in], also while the int4 backend holds them packed only."""
        if self.qweight is None:
            return unpack_int4(self.gemm.packed, self.in_features)
        return self.qweight

    def dequantized_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        if self.weight_bits == FP_BITS:
            return self.weight.to(dtype or self.weight.dtype)
        codes = self.codes()
        if kernels.available(codes):
            return kernels.dequantize_weight(codes, self.w_scale, self.w_zero, dtype or torch.float32)
        return dequantize_weight(codes, self.w_scale, self.w_zero).to(dtype or torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gemm is not None:
            return self.gemm(x, self)
        x = self.act(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        g = self.granularity
        gran = f"group({g.group_size})" if g.kind == "group" else g.kind
        a = self.act.spec
        act = f"A{a.bits} {a.mode}" + (f" g={a.group_size}" if a.group_size else "") if a.active else "A16"
        return f"{self.in_features}->{self.out_features}, W{self.weight_bits} {gran}, {act}"
