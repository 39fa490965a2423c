"""How a QuantLinear computes. Every backend runs the same plan and codes:

fake  dequantize the weight codes and fake-quantize the input (Triton kernels on CUDA), then a
      float GEMM: the simulation every search and metric uses. Runs everywhere.
int8  integer GEMM on the codes (torch._int_mm), exact up to float rounding (below). CPU, CUDA.
fp8   W8A8 in FP8 E4M3 with torch._scaled_mm: the plan's dequantized weight W^ re-rounded to
      E4M3 with one scale per output channel, the input per token (scale = amax / 448) whatever
      the plan's activation groups. Not the plan's integer grid, so it differs from fake by
      E4M3 rounding. CUDA of compute capability 8.9+ (Ada, Hopper); on CPUs the same E4M3
      operands are multiplied in float32 (a check of the numbers, not a speed-up).
int4  weights of at most 4 bits held packed two per byte on the GPU and dequantized inside
      the GEMM's K loop (lowbit_kernels.w4_linear); activations as the plan says (fake-quantized
      by the Triton kernel, or A16). Equals fake up to the GEMM's summation order. Triton + CUDA.

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

import os

import torch
import torch.nn as nn

from pipeline.options import Backend, values
from pipeline.quant import lowbit_kernels
from pipeline.quant.activation import dynamic_qparams
from pipeline.quant.buffers import KeepDtypeBuffers
from pipeline.quant.errors import BackendError
from pipeline.quant.packing import PACKED_BITS, pack_int4, unpack_int4
from pipeline.quant.quantizer import FP_BITS, quantize

BACKENDS = values(Backend)


class IntGemm(KeepDtypeBuffers):
    """The weight side of one layer, prepared once: int8 blocks, their column sums, centred
    zero points and scales per block. Buffers are not saved (rebuilt from the codes)."""

    _keep_dtype = ("w_scale", "w_zero_c")

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

    def forward(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        act, bias = layer.act, layer.bias
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


class Fp8Gemm(KeepDtypeBuffers):
    """E4M3 weight [N, K] with one float32 scale per output channel, from the plan's W^."""

    _keep_dtype = ("w8", "w_scale")

    def __init__(self, layer: nn.Module):
        super().__init__()
        w8, s = lowbit_kernels.fp8_rows_reference(layer.dequantized_weight(torch.float32))
        self.register_buffer("w8", w8, persistent=False)
        self.register_buffer("w_scale", s.T.contiguous(), persistent=False)  # [1, N]

    def forward(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        # the Triton kernel on GPUs only: the interpreter rounds to E4M3 wrongly at binade edges
        q, s = (
            lowbit_kernels.fp8_rows
            if x.is_cuda and lowbit_kernels.triton is not None
            else lowbit_kernels.fp8_rows_reference
        )(x2)
        if x.is_cuda:  # row-wise scaled FP8 GEMM (it writes bf16 only)
            y = torch._scaled_mm(q, self.w8.t(), scale_a=s, scale_b=self.w_scale, out_dtype=torch.bfloat16).to(x.dtype)
        else:  # the same E4M3 operands multiplied in float32: CPU _scaled_mm is per-tensor only before torch 2.13
            y = torch.nn.functional.linear(q.float() * s, self.w8.float() * self.w_scale.T).to(x.dtype)
        if layer.bias is not None:
            y += layer.bias.to(x.dtype)
        return y.reshape(*x.shape[:-1], -1)


class Int4Gemm(nn.Module):
    """The weight codes packed two per byte; the layer's own codes are released (see use_backend)."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.register_buffer("packed", pack_int4(layer.qweight), persistent=False)

    def forward(self, x: torch.Tensor, layer: nn.Module) -> torch.Tensor:
        x = layer.act(x)
        bias = None if layer.bias is None else layer.bias.to(x.dtype)
        return lowbit_kernels.w4_linear(x, self.packed, layer.w_scale, layer.w_zero, bias)


def _check_hardware(backend: str) -> None:
    """Refuse, before any work, a backend this machine cannot run."""
    if backend == Backend.FP8:
        if torch.cuda.is_available():
            cc = torch.cuda.get_device_capability()
            if cc < (8, 9):
                raise BackendError(
                    backend,
                    f"needs an NVIDIA GPU of compute capability 8.9 or newer (Ada, Hopper); "
                    f"this GPU ({torch.cuda.get_device_name()}) is {cc[0]}.{cc[1]}. "
                    "Use 'int8' or 'fake'",
                )
        elif not hasattr(torch, "float8_e4m3fn") or not hasattr(torch, "_scaled_mm"):
            raise BackendError(
                backend, f"needs FP8 support in torch (2.4+); torch {torch.__version__} has none. Use 'fake'"
            )
    # Triton's interpreter (TRITON_INTERPRET=1) runs the kernel on a CPU: how it is tested there
    interpreting = os.environ.get("TRITON_INTERPRET") == "1"
    if backend == Backend.INT4 and not (
        lowbit_kernels.triton is not None and (torch.cuda.is_available() or interpreting)
    ):
        raise BackendError(
            backend,
            "needs Triton and a CUDA GPU (its kernel dequantizes inside the GEMM); this "
            "machine has "
            + ("no CUDA GPU" if lowbit_kernels.triton is not None else "no Triton")
            + ". Use 'fake' (the same numbers)",
        )


def _check_layer(layer: nn.Module, name: str, backend: str) -> None:
    spec = layer.act.spec
    k, n = layer.in_features, layer.out_features
    if backend == Backend.FP8:
        a = spec.bits if spec.active else FP_BITS
        if layer.weight_bits != 8 or a != 8:
            raise BackendError(
                backend,
                f"is W{layer.weight_bits}A{a}; the fp8 backend computes W8A8 (use 'int4' "
                "for 4-bit weights, 'int8' or 'fake' otherwise)",
                name,
            )
        if k % 16 or n % 16:
            raise BackendError(backend, f"is {k} -> {n}; torch._scaled_mm needs both sizes to be multiples of 16", name)
    if backend == Backend.INT4:
        if layer.weight_bits > PACKED_BITS:
            raise BackendError(
                backend,
                f"has W{layer.weight_bits}; the int4 backend needs weights of at most 4 "
                "bits (use 'fp8', 'int8' or 'fake')",
                name,
            )
        group = k // layer.w_scale.shape[1]  # per tensor, channel or group alike
        if lowbit_kernels.w4_block_k(k, group) is None:
            raise BackendError(
                backend,
                f"has {k} input channels in groups of {group}; the int4 kernel needs "
                "groups of a multiple of 16 channels and input sizes of a multiple of 32",
                name,
            )


def _block(layer, name: str) -> int:
    """The largest block in which activation and weight each share one scale, or a refusal."""
    k = layer.in_features
    spec = layer.act.spec
    if not spec.active or spec.bits > 8:
        raise BackendError(
            Backend.INT8.value,
            f"has A{spec.bits if spec.active else FP_BITS}; the int8 backend "
            "needs activations of at most 8 bits (use 'fake')",
            name,
        )
    g_w = k // layer.w_scale.shape[1]
    g_a = (spec.group_size or k) if spec.mode == "dynamic" else k
    small, large = sorted((g_w, g_a))
    if large % small:
        raise BackendError(
            Backend.INT8.value,
            f"has weight groups of {g_w} and activation groups of {g_a} "
            "channels; the int8 backend needs one to divide the other",
            name,
        )
    return small


def use_backend(model: nn.Module, backend: str) -> nn.Module:
    """Switch every quantized linear of `model` to `backend`, in place. Every layer is checked
    before any is changed, so a refused backend (BackendError) leaves the model as it was."""
    from pipeline.quant.linear import QuantLinear

    if backend not in BACKENDS:
        raise BackendError(backend, f"unknown; allowed: {', '.join(BACKENDS)}")
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, QuantLinear) and m.weight_bits != FP_BITS]
    if backend != Backend.FAKE:
        _check_hardware(backend)
    for name, m in layers:
        if backend in (Backend.FP8, Backend.INT4):
            _check_layer(m, name, backend)
        elif backend == Backend.INT8:
            _block(m, name)
    for name, m in layers:
        if isinstance(m.gemm, Int4Gemm):  # back from int4: the layer needs its own codes again
            m.qweight = unpack_int4(m.gemm.packed, m.in_features).to(m.gemm.packed.device)
        if backend == Backend.FAKE:
            m.gemm = None
        elif backend == Backend.INT8:
            m.gemm = IntGemm(m, _block(m, name))
        elif backend == Backend.FP8:
            m.gemm = Fp8Gemm(m)
        else:
            m.gemm = Int4Gemm(m)
            m.qweight = None  # hold the weight packed only: half the bytes of one code per byte
    return model
