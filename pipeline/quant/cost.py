"""What a quantization plan costs, exactly: storage bits and bit-operations per layer.

Storage of a quantized linear [out, in]: every weight at its bit width, plus one float16 scale
and one b-bit zero point (none when symmetric) per group of weights that share them, plus the
bias at 16 bits. An unquantized (16-bit) weight costs 16 bits per element.

Bit-operations (BOPs) of one forward, per token and output feature:
    in x w_bits x a_bits            the integer (or 16-bit) multiply-accumulates, and
    segments x 16 x 16              one float16 rescale per run of input channels that shares a
                                    (weight scale, activation scale) pair.
segments = in/g_w + in/g_a - in/lcm(g_w, g_a) counts the runs cut by both groupings (g = in
when a side has one scale per row or per token; no rescale when neither side is quantized).
Zero-point corrections are folded into the rescale and not counted apart. Smaller groups fit
the data better and cost more rescales: the trade the granularity search makes.
A low-rank branch of rank r adds 16 x r x (in + out) bits and r x (in + out) 16-bit
multiply-accumulates per token; an input transform no layer absorbs (transform.py) adds one
float16 scale per input channel and one 16-bit multiply per input element.

Also here: `model_size` of a quantized model as papers report it, and `measure_shapes`, the
tokens each linear sees per image (from one forward).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn as nn

from pipeline.options import BudgetMetric
from pipeline.quant.linear import QuantLinear
from pipeline.quant.plan import LayerPlan, QuantPlan
from pipeline.quant.quantizer import FP_BITS
from pipeline.quant.transform import find_sites

SCALE_BITS = 16  # scales are stored as float16, rescales run in 16-bit floats


@dataclass(frozen=True)
class LayerShape:
    in_features: int
    out_features: int
    tokens: int = 1  # input rows per image per denoiser forward
    bias: bool = True
    folds: bool = True  # a transform of its input folds into the model (else: explicit, at run time)


@dataclass(frozen=True)
class Cost:
    bits: int  # storage of the layers' weights, scales, zero points and biases
    bitops: int  # per image per denoiser forward

    @property
    def size_mb(self) -> float:
        return self.bits / 8e6

    @property
    def gbitops(self) -> float:
        return self.bitops / 1e9

    def value(self, metric: str) -> float:
        """The budget quantity: 'bitops' in GBOPs or 'size' in MB."""
        return {BudgetMetric.BITOPS: self.gbitops, BudgetMetric.SIZE: self.size_mb}[metric]

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.bits + other.bits, self.bitops + other.bitops)


def weight_storage_bits(
    in_features: int, out_features: int, bits: int, scale_pairs: int, symmetric: bool, bias: bool
) -> int:
    """Weights at `bits`, `scale_pairs` float16 scales (+ b-bit zero points), bias at 16."""
    n = in_features * out_features
    extra = SCALE_BITS * out_features if bias else 0
    if bits == FP_BITS:
        return FP_BITS * n + extra
    zero_bits = 0 if symmetric else bits
    return bits * n + scale_pairs * (SCALE_BITS + zero_bits) + extra


def _span(kind: str, group_size: int | None, in_features: int) -> int:
    """Input channels that share one scale along a row (weights) or a token (activations)."""
    return group_size if kind == "group" and group_size else in_features


def explicit_transform(plan: QuantPlan, shape: LayerShape) -> bool:
    """Whether the plan transforms this layer's input at run time (smoothing where no layer absorbs it)."""
    return plan.smooth_alpha is not None and plan.smooth_explicit and not shape.folds


def layer_cost(lp: LayerPlan, shape: LayerShape, explicit: bool = False) -> Cost:
    """The layer's cost; `explicit`: it divides its input at run time (explicit_transform)."""
    c, o = shape.in_features, shape.out_features
    quant_w = lp.weight_bits != FP_BITS
    gw = _span(lp.granularity, lp.group_size, c)
    pairs = 1 if lp.granularity == "tensor" else o * (c // gw)
    bits = weight_storage_bits(c, o, lp.weight_bits, pairs, lp.weight_symmetric, shape.bias)

    act = lp.act_spec
    a_bits = act.bits if act.active else FP_BITS
    ga = _span("group", act.group_size, c) if act.active and act.mode == "dynamic" else c
    if quant_w or act.active:
        segments = c // gw + c // ga - c // math.lcm(gw, ga)
    else:
        segments = 0
    per_output = c * lp.weight_bits * a_bits + segments * SCALE_BITS * SCALE_BITS
    per_token = o * per_output
    if lp.lowrank_rank:
        bits += FP_BITS * lp.lowrank_rank * (c + o)
        per_token += lp.lowrank_rank * (c + o) * FP_BITS * FP_BITS
    if explicit:
        bits += SCALE_BITS * c
        per_token += c * SCALE_BITS * SCALE_BITS
    return Cost(bits, shape.tokens * per_token)


def plan_cost(plan: QuantPlan, shapes: dict[str, LayerShape]) -> Cost:
    """The cost of the plan's layers (the rest of the model is the same for every plan)."""
    total = Cost(0, 0)
    for name, lp in plan.layers.items():
        total = total + layer_cost(lp, shapes[name], explicit_transform(plan, shapes[name]))
    return total


def model_size(model: nn.Module) -> dict[str, float]:
    """Bytes as papers report them: every parameter at 16 bits (FP16), except quantized
    weights at their bit width plus a float16 scale and a b-bit zero point per group."""
    fp16_bits = 0
    q_bits = 0
    inside = set()
    for name, m in model.named_modules():
        if isinstance(m, QuantLinear):
            inside.add(name)
            bias = m.bias is not None
            fp16_bits += weight_storage_bits(m.in_features, m.out_features, FP_BITS, 0, True, bias)
            pairs = 0 if m.weight_bits == FP_BITS else m.w_scale.numel()
            q_bits += weight_storage_bits(m.in_features, m.out_features, m.weight_bits, pairs, m.weight_symmetric, bias)
            if m.act.is_static:
                q_bits += m.act.scale.numel() * (16 + m.act.spec.bits)
            q_bits += FP_BITS * m.lowrank_rank * (m.in_features + m.out_features)
            q_bits += sum(16 * t.numel() for t in (m.in_scale, m.in_shift) if t is not None)
    for name, p in model.named_parameters():
        if not any(name.startswith(q + ".") for q in inside):
            fp16_bits += 16 * p.numel()
            q_bits += 16 * p.numel()
    return {"size_mb": q_bits / 8e6, "fp16_size_mb": fp16_bits / 8e6}


@torch.no_grad()
def measure_shapes(model: nn.Module, names: Iterable[str], kwargs: dict) -> dict[str, LayerShape]:
    """Each named linear's shape and input rows per image, from one forward of `kwargs`
    (DiT: the patch tokens; rows / batch size, so classifier-free guidance does not count)."""
    names = list(names)
    rows: dict[str, int] = {}
    images = kwargs["hidden_states"].shape[0]
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(
            lambda m, args, n=n: rows.__setitem__(n, args[0].numel() // args[0].shape[-1])
        )
        for n in names
    ]
    try:
        model(**kwargs)
    finally:
        for h in hooks:
            h.remove()
    folds = {n for site in find_sites(model, list(names)) if site.folded for n in site.consumers}
    out = {}
    for n in names:
        m = model.get_submodule(n)
        out[n] = LayerShape(m.in_features, m.out_features, rows.get(n, 0) // images, m.bias is not None, n in folds)
    return out
