"""QuantLinear: an nn.Linear replacement that holds integer weight codes, not float weights.

Buffers: `qweight` (uint8 codes [out, in]), `w_scale`, `w_zero` ([out, G]: per-tensor G = 1
with one row, per-channel G = 1, per-group G = in / g), `bias` in the model's dtype. The
forward fake-quantizes the input (activation.py), dequantizes the weight, and runs F.linear:
exactly x^ W^T + b with x^ and W^ from the formulas in quantizer.py.

Optional, for the peers' methods: `in_scale` / `in_shift` [in] divide the input first where no
other layer absorbs that transform (transform.py), and `lowrank_down` [r, in] / `lowrank_up`
[out, r] add SVDQuant's 16-bit branch on the unquantized input (lowrank.py).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.quant import kernels, lowrank
from pipeline.quant.activation import ActQuantizer, ActSpec, TimestepContext
from pipeline.quant.buffers import KeepDtypeBuffers
from pipeline.quant.granularity import Granularity, dequantize_weight, quantize_weight
from pipeline.quant.packing import unpack_int4
from pipeline.quant.quantizer import FP_BITS
from pipeline.quant.transform import InputTransform


class QuantLinear(KeepDtypeBuffers):
    _keep_dtype = ("w_scale", "w_zero", "in_scale", "in_shift")

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
        lowrank_rank: int = 0,
        transform: tuple[bool, bool] = (False, False),
    ):
        """transform: whether the layer divides (scales) and shifts its input at run time."""
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
        scaled, shifted = transform
        self.register_buffer("in_scale", torch.ones(in_features) if scaled else None)
        self.register_buffer("in_shift", torch.zeros(in_features) if shifted else None)
        self.lowrank_rank = lowrank_rank
        self.register_buffer(
            "lowrank_down", torch.zeros(lowrank_rank, in_features, dtype=dtype) if lowrank_rank else None
        )
        self.register_buffer(
            "lowrank_up", torch.zeros(out_features, lowrank_rank, dtype=dtype) if lowrank_rank else None
        )
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
        lowrank_rank: int = 0,
    ) -> QuantLinear:
        """Round-to-nearest from the float weight, or take (codes, scale, zero) given (GPTQ, of
        the low-rank residual when there is a branch). A TransformedLinear's input transform
        moves into the QuantLinear."""
        w = linear.weight.detach()
        transform: InputTransform | None = getattr(linear, "transform", None)
        q = cls(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            weight_bits,
            granularity,
            ActQuantizer.from_ranges(act_spec, act_ranges, ctx),
            dtype=w.dtype,
            weight_symmetric=symmetric,
            lowrank_rank=lowrank_rank,
            transform=(transform is not None, transform is not None and transform.shift is not None),
        )
        q.to(w.device)
        if transform is not None:
            q.in_scale.copy_(transform.scale)
            if transform.shift is not None:
                q.in_shift.copy_(transform.shift)
        if lowrank_rank:
            down, up, w = lowrank.split(w, lowrank_rank)
            q.lowrank_down.copy_(down)
            q.lowrank_up.copy_(up)
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

    def effective_weight(self) -> torch.Tensor:
        """The float weight the layer applies to its (transformed) input: W^ + the branch."""
        w = self.dequantized_weight()
        if self.lowrank_rank:
            w = w + self.lowrank_up.float() @ self.lowrank_down.float()
        return w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.in_scale is not None:
            if self.in_shift is not None:
                x = x - self.in_shift.to(x.dtype)
            x = x / self.in_scale.to(x.dtype)
        if self.gemm is not None:
            y = self.gemm(x, self)
        else:
            bias = None if self.bias is None else self.bias.to(x.dtype)
            y = F.linear(self.act(x), self.dequantized_weight(x.dtype), bias)
        if self.lowrank_rank:
            y = y + F.linear(F.linear(x, self.lowrank_down.to(x.dtype)), self.lowrank_up.to(x.dtype))
        return y

    def extra_repr(self) -> str:
        g = self.granularity
        gran = f"group({g.group_size})" if g.kind == "group" else g.kind
        a = self.act.spec
        act = f"A{a.bits} {a.mode}" + (f" g={a.group_size}" if a.group_size else "") if a.active else "A16"
        extra = f", rank-{self.lowrank_rank} branch" if self.lowrank_rank else ""
        extra += ", input transform" if self.in_scale is not None else ""
        return f"{self.in_features}->{self.out_features}, W{self.weight_bits} {gran}, {act}{extra}"
