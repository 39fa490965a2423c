"""Activation quantization of a Linear's input: dynamic, static per timestep, or static.

dynamic          Q-DiT: scale and zero point from each token's own min/max, per group of g
                 channels, at every forward, so they follow every sample and timestep.
static_timestep  one per-tensor range per sampler timestep, from the `stats` stage; the
                 current timestep (nearest calibrated one) picks the range.
static           one per-tensor range over all timesteps: the usual PTQ baseline.
none             not quantized (16 bits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from pipeline.options import ActMode, values
from pipeline.quant import kernels
from pipeline.quant.buffers import KeepDtypeBuffers
from pipeline.quant.quantizer import FP_BITS, fake_quant, qparams

ACT_MODES = values(ActMode)


@dataclass(frozen=True)
class ActSpec:
    bits: int = FP_BITS
    mode: str = "none"
    group_size: int | None = None  # dynamic: channels per group; None = the whole token
    symmetric: bool = False

    @property
    def active(self) -> bool:
        return self.bits != FP_BITS and self.mode != "none"

    @property
    def static(self) -> bool:
        """Uses calibrated ranges (static or static_timestep), rather than none or dynamic."""
        return self.active and self.mode in ("static", "static_timestep")


class TimestepContext:
    """Holds the timestep of the current forward for static per-timestep ranges."""

    def __init__(self):
        self.timestep: torch.Tensor | None = None


def attach_timestep_context(model: nn.Module) -> TimestepContext:
    ctx = TimestepContext()

    def grab(module, args, kwargs):
        ctx.timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)

    model.register_forward_pre_hook(grab, with_kwargs=True)
    return ctx


def dynamic_qparams(
    x: torch.Tensor, bits: int, g: int, symmetric: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x [..., K] as float32 groups [rows, K / g, g], and each group's scale and zero point
    [rows, K / g, 1] from its own min/max: dynamic quantization's parameters."""
    xg = x.reshape(-1, x.shape[-1] // g, g).float()
    s, z = qparams(xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True), bits, symmetric, fp16_scale=False)
    return xg, s, z


def _dynamic_reference(x: torch.Tensor, bits: int, g: int, symmetric: bool) -> torch.Tensor:
    xg, s, z = dynamic_qparams(x, bits, g, symmetric)
    return fake_quant(xg, s, z, bits).reshape(x.shape).to(x.dtype)


def dynamic_fake_quant(x: torch.Tensor, bits: int, group_size: int | None, symmetric: bool = False) -> torch.Tensor:
    """Per token (every position of the last dim's leading axes), per group of channels.
    On CUDA a fused Triton kernel computes the same numbers in one pass."""
    g = group_size or x.shape[-1]
    if kernels.available(x):
        return kernels.dynamic_fake_quant(x, bits, g, symmetric)
    return _dynamic_reference(x, bits, g, symmetric)


class ActQuantizer(KeepDtypeBuffers):
    """Static modes hold scale, zero [T] and the calibrated timesteps [T] (T = 1 for `static`)."""

    _keep_dtype = ("scale", "zero", "timesteps")

    def __init__(
        self,
        spec: ActSpec,
        static: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        ctx: TimestepContext | None = None,
    ):
        super().__init__()
        self.spec = spec
        self.ctx = ctx
        if self.is_static:
            if static is None:
                raise ValueError(f"activation mode {spec.mode!r} needs calibrated ranges (the stats stage)")
            scale, zero, timesteps = static
            self.register_buffer("scale", scale.float())
            self.register_buffer("zero", zero.float())
            self.register_buffer("timesteps", timesteps.float())

    @property
    def is_static(self) -> bool:
        return self.spec.static

    @classmethod
    def from_ranges(
        cls,
        spec: ActSpec,
        ranges: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
        ctx: TimestepContext | None = None,
    ) -> ActQuantizer:
        """ranges: (lo [T], hi [T], timesteps [T]) from the stats stage."""
        static = None
        if ranges is not None and spec.static:
            lo, hi, ts = ranges
            static = (*qparams(lo, hi, spec.bits, spec.symmetric), ts)
        return cls(spec, static, ctx)

    def static_qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero point of a static mode, broadcastable to x."""
        if self.spec.mode == "static":
            return self.scale, self.zero
        t = self.ctx.timestep if self.ctx is not None else None
        if t is None:
            raise RuntimeError(
                "static_timestep activation quantization needs the model's timestep; "
                "attach_timestep_context(model) first"
            )
        t = torch.as_tensor(t, device=x.device).float().reshape(-1)
        slot = (self.timesteps[None, :] - t[:, None]).abs().argmin(1)  # nearest calibrated timestep
        view = (-1,) + (1,) * (x.dim() - 1)
        return self.scale[slot].reshape(view), self.zero[slot].reshape(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        spec = self.spec
        if not spec.active:
            return x
        if spec.mode == "dynamic":
            return dynamic_fake_quant(x, spec.bits, spec.group_size, spec.symmetric)
        s, z = self.static_qparams(x)
        return fake_quant(x, s, z, spec.bits).to(x.dtype)
