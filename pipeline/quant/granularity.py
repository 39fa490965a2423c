"""Granularity of weight quantization: which weights share a scale and zero point.

A weight W [out, in] is viewed as [out, groups, g]; each (row, group) has its own (s, z):
    per-tensor:          one pair for the whole matrix      scale [1, 1]
    per-output-channel:  one pair per row (g = in)          scale [out, 1]
    per-group(g):        g consecutive input channels/row   scale [out, in / g]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from pipeline.options import GranularityKind, values
from pipeline.quant.errors import PlanError
from pipeline.quant.quantizer import clip_search, dequantize, qparams, quantize

GRANULARITIES = values(GranularityKind)


@dataclass(frozen=True)
class Granularity:
    kind: str  # tensor | channel | group
    group_size: int | None = None

    def groups(self, in_features: int) -> int:
        return in_features // self.group_size if self.kind == "group" else 1

    def check(self, layer: str, in_features: int) -> None:
        if self.kind not in GRANULARITIES:
            raise PlanError(f"{layer}: granularity {self.kind!r}; allowed: {', '.join(GRANULARITIES)}")
        if self.kind == "group":
            g = self.group_size
            if not isinstance(g, int) or g < 1 or in_features % g:
                valid = [d for d in range(1, in_features + 1) if in_features % d == 0]
                raise PlanError(
                    f"{layer}: group size {g} does not divide its input size {in_features}; "
                    f"valid group sizes: {', '.join(map(str, valid))}"
                )


def _rows(w: torch.Tensor, gran: Granularity) -> torch.Tensor:
    """The weight as [n_qparams, elements sharing them]."""
    out, inp = w.shape
    if gran.kind == "tensor":
        return w.reshape(1, -1)
    if gran.kind == "channel":
        return w
    return w.reshape(out * (inp // gran.group_size), gran.group_size)


def scale_shape(shape: tuple[int, int], gran: Granularity) -> tuple[int, int]:
    out, inp = shape
    return {"tensor": (1, 1), "channel": (out, 1), "group": (out, gran.groups(inp))}[gran.kind]


def weight_qparams(
    w: torch.Tensor, bits: int, gran: Granularity, symmetric: bool = False, clip: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    rows = _rows(w.float(), gran)
    if clip:
        s, z = clip_search(rows, bits, symmetric)
    else:
        s, z = qparams(rows.amin(1, keepdim=True), rows.amax(1, keepdim=True), bits, symmetric)
    shape = scale_shape(tuple(w.shape), gran)
    return s.reshape(shape), z.reshape(shape)


def _grouped(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """[out, in] -> [out, G, in / G] for parameters of shape [out, G] (or [1, 1])."""
    if scale.shape[0] == 1 and w.shape[0] != 1:  # per-tensor
        return w.reshape(1, 1, -1)
    return w.reshape(w.shape[0], scale.shape[1], -1)


def quantize_weight(
    w: torch.Tensor, bits: int, gran: Granularity, symmetric: bool = False, clip: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Round-to-nearest: (codes uint8 [out, in], scale [out, G], zero [out, G])."""
    s, z = weight_qparams(w, bits, gran, symmetric, clip)
    codes = quantize(_grouped(w, s), s[..., None], z[..., None], bits)
    return codes.reshape(w.shape), s, z


def dequantize_weight(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """Float32 weight [out, in] from codes and per-(row, group) parameters."""
    return dequantize(_grouped(codes, scale), scale[..., None], zero[..., None]).reshape(codes.shape)
