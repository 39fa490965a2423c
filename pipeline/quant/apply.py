"""Turn an FP DiT into a quantized one following a plan: the one entry point `quantize`.

    quantize(model, plan)                             round-to-nearest (with the plan's clipping search)
    quantize(model, plan, calibration=batches)        GPTQ, when the plan says `gptq: true`
    quantize(model, plan, stats=stats)                plans with static activations or input
                                                      transforms (smoothing, RepQ)

It first folds the plan's input transforms into the model (`prepare`, transform.py), then
replaces the planned nn.Linear modules in place by QuantLinear. Saving and loading the result
is checkpoint.py; its size and cost are cost.py.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pipeline.errors import require_finite
from pipeline.quant import lowrank
from pipeline.quant.activation import TimestepContext, attach_timestep_context
from pipeline.quant.attention import QuantAttnProcessor
from pipeline.quant.errors import MissingRanges, NonFiniteError, PlanError
from pipeline.quant.gptq import HessianAccumulator, gptq_quantize
from pipeline.quant.linear import QuantLinear
from pipeline.quant.plan import LayerPlan, QuantPlan
from pipeline.quant.quantizer import FP_BITS
from pipeline.quant.transform import InputTransform, act_salience, find_sites, fold, repq, smoothing, weight_salience

Ranges = dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def linear_in_features(model: nn.Module) -> dict[str, int]:
    return {n: m.in_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def timestep_context(model: nn.Module, plan: QuantPlan) -> TimestepContext | None:
    if any(lp.act_spec.active and lp.act_mode == "static_timestep" for lp in plan.layers.values()):
        return attach_timestep_context(model)
    return None


def set_attention(model: nn.Module, plan: QuantPlan) -> None:
    if plan.attn_bits == FP_BITS:
        return
    for m in model.modules():
        if hasattr(m, "set_processor") and hasattr(m, "to_q"):
            m.set_processor(QuantAttnProcessor(plan.attn_bits, plan.attn_softmax))


@dataclass
class Prepared:
    """What `prepare` did: the input transform of each transformed layer, and the static ranges."""

    transforms: dict[str, InputTransform] = field(default_factory=dict)
    ranges: Ranges | None = None


def _stat(stats: dict[str, torch.Tensor], name: str, kind: str) -> torch.Tensor:
    if f"{name}/{kind}" not in stats:
        raise MissingRanges(name)
    return stats[f"{name}/{kind}"][stats["count"] > 0].float()


def site_transform(model: nn.Module, plan: QuantPlan, site, stats) -> InputTransform | None:
    """The plan's transform of one site's input, from the statistics of that input."""
    planned = [n for n in site.consumers if n in plan.layers]
    if plan.smooth_alpha is not None and (site.folded or plan.smooth_explicit):
        w_sal = weight_salience([model.get_submodule(n).weight for n in site.consumers])
        x_sal = act_salience(_stat(stats, planned[0], "absmax"), w_sal, plan.smooth_salience)
        return smoothing(x_sal, w_sal, plan.smooth_alpha)
    spec = plan.layers[planned[0]].act_spec
    if plan.reparam and site.kind == "modulation" and spec.static:
        return repq(_stat(stats, planned[0], "min").amin(0), _stat(stats, planned[0], "max").amax(0), spec.bits)
    return None


def prepare(model: nn.Module, plan: QuantPlan, stats: dict[str, torch.Tensor] | None) -> Prepared:
    """Fold the plan's input transforms into the FP model, in place and exactly, and compute the
    static activation ranges of the transformed inputs. Both need activation statistics (the
    stats stage: per-channel `{layer}/min`, `/max`, `/absmax` [T, C], `count`, `timesteps`)."""
    out = Prepared()
    if plan.needs_stats() and stats is None:
        raise MissingRanges(next(iter(plan.layers)))
    if plan.transforms():
        for site in find_sites(model, list(plan.layers)):
            t = site_transform(model, plan, site, stats)
            if t is not None:
                fold(model, site, t)
                out.transforms |= dict.fromkeys(site.consumers, t)
    if plan.needs_ranges():
        out.ranges = act_ranges(stats, plan, out.transforms)
    model.input_transforms = out.transforms  # for quant_state: how to redo the folding on load
    return out


def act_ranges(
    stats: dict[str, torch.Tensor], plan: QuantPlan, transforms: dict[str, InputTransform] | None = None
) -> Ranges:
    """Per-tensor activation ranges for the static layers of a plan, from activation statistics
    (per-channel `{layer}/min` and `/max` [T, C] per calibrated timestep, `count`, `timesteps`)
    of the inputs as `transforms` leave them: one per calibrated timestep (static_timestep) or
    one over all timesteps (static)."""
    out: Ranges = {}
    seen = stats["count"] > 0
    timesteps = stats["timesteps"][seen].float()
    for name, lp in plan.layers.items():
        if not lp.act_spec.static:
            continue
        lo, hi = _stat(stats, name, "min"), _stat(stats, name, "max")
        if name in (transforms or {}):
            lo, hi = transforms[name].range(lo, hi)
        lo_t, hi_t = lo.amin(1), hi.amax(1)
        if lp.act_mode == "static_timestep":
            out[name] = (lo_t, hi_t, timesteps)
        else:
            out[name] = (lo_t.amin().reshape(1), hi_t.amax().reshape(1), torch.zeros(1))
    return out


def quant_linear(
    model: nn.Module,
    name: str,
    lp: LayerPlan,
    plan: QuantPlan,
    ranges: Ranges | None,
    ctx: TimestepContext | None,
    codes=None,
) -> QuantLinear:
    """The QuantLinear of one planned layer: round-to-nearest, or the given (codes, scale, zero)."""
    if lp.act_spec.static and name not in (ranges or {}):
        raise MissingRanges(name)
    linear = model.get_submodule(name)
    return QuantLinear.from_linear(
        linear,
        lp.weight_bits,
        lp.weight_granularity,
        lp.act_spec,
        act_ranges=(ranges or {}).get(name),
        ctx=ctx,
        symmetric=lp.weight_symmetric,
        clip=plan.clip_search,
        codes=codes,
        lowrank_rank=lp.lowrank_rank,
    )


def quantize(
    model: nn.Module,
    plan: QuantPlan,
    *,
    stats: dict[str, torch.Tensor] | None = None,
    calibration: list[dict] | None = None,
    progress: bool = True,
    prepared: Prepared | None = None,
) -> nn.Module:
    """Quantize every planned layer of `model` in place, as the plan says: round-to-nearest, or
    GPTQ (`plan.gptq`) from `calibration`, a list of model keyword arguments (batches of the
    denoiser's inputs). `stats`: activation statistics, for static activation ranges and input
    transforms; `prepared`: `prepare`'s result when the caller already folded the transforms."""
    in_features = linear_in_features(model)
    plan.validate(in_features, {n: model.get_submodule(n).out_features for n in plan.layers if n in in_features})
    if prepared is None:
        prepared = prepare(model, plan, stats)
    ranges = prepared.ranges
    ctx = timestep_context(model, plan)
    if plan.gptq:
        if not calibration:
            raise PlanError("the plan asks for GPTQ, which needs calibration inputs (model keyword arguments)")
        _gptq(model, plan, calibration, ranges, ctx, progress)
    else:
        for name, lp in plan.layers.items():
            set_module(model, name, quant_linear(model, name, lp, plan, ranges, ctx))
    set_attention(model, plan)
    return model


def gptq_codes(layer: nn.Module, lp: LayerPlan, plan: QuantPlan, hessian: torch.Tensor):
    """GPTQ's (codes, scale, zero) of one layer from the Hessian of its input: of the residual
    when the layer has a low-rank branch."""
    weight = layer.weight
    if lp.lowrank_rank:
        weight = lowrank.split(weight, lp.lowrank_rank)[2].to(weight.dtype)
    return gptq_quantize(
        weight,
        hessian,
        lp.weight_bits,
        lp.weight_granularity,
        lp.weight_symmetric,
        plan.clip_search,
        plan.gptq_block_size,
        plan.gptq_damp,
    )


def _hessian_hook(layer: nn.Module, acc: HessianAccumulator):
    """The Hessian of the input the quantized weight sees: after an explicit transform."""
    t = getattr(layer, "transform", None)
    return layer.register_forward_pre_hook(lambda m, args: acc.add(args[0] if t is None else t.apply(args[0])))


@torch.no_grad()
def input_hessians(model: nn.Module, names: list[str], batches: list[dict], progress: bool = False) -> dict:
    """The Hessians X X^T of the named linears' inputs in one pass of the model as it is (FP):
    what the search's GPTQ variants share, whatever the other layers' group sizes."""
    accs = {
        n: HessianAccumulator(model.get_submodule(n).in_features, model.get_submodule(n).weight.device) for n in names
    }
    hooks = [_hessian_hook(model.get_submodule(n), accs[n]) for n in names]
    try:
        for kwargs in tqdm(batches, desc="Hessians", disable=not progress, mininterval=2.0):
            model(**kwargs)
    finally:
        for h in hooks:
            h.remove()
    return {n: a.hessian() for n, a in accs.items()}


class _Stop(Exception):
    """Ends a calibration forward once the block being quantized has run."""


def _blocks(plan: QuantPlan) -> list[tuple[str | None, list[str]]]:
    """Plan layers grouped per transformer block, in forward order; others last."""
    groups: dict[str | None, list[str]] = {}
    for name in plan.layers:
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "transformer_blocks" else None
        groups.setdefault(key, []).append(name)
    blocks = sorted((k for k in groups if k is not None), key=lambda k: int(k.split(".")[1]))
    return [(k, groups[k]) for k in blocks] + ([(None, groups[None])] if None in groups else [])


def _gptq(
    model: nn.Module,
    plan: QuantPlan,
    batches: list[dict],
    ranges: Ranges | None,
    ctx: TimestepContext | None,
    progress: bool,
) -> None:
    """GPTQ block by block: the Hessians of block k's linears come from inputs that already
    passed through the quantized blocks 0..k-1, as they will at sampling time."""
    current: dict = {}
    for block_name, names in tqdm(_blocks(plan), desc="GPTQ", disable=not progress, mininterval=2.0):
        accs = {}
        hooks = []
        for name in names:
            if plan.layers[name].weight_bits == FP_BITS:
                continue
            layer = model.get_submodule(name)
            accs[name] = HessianAccumulator(layer.in_features, layer.weight.device)
            hooks.append(layer.register_forward_pre_hook(_finite_check(name, current)))
            hooks.append(_hessian_hook(layer, accs[name]))
        if block_name is not None:

            def stop(module, args, output):
                raise _Stop

            hooks.append(model.get_submodule(block_name).register_forward_hook(stop))
        try:
            with torch.no_grad():
                for kwargs in batches:
                    current["timestep"] = kwargs["timestep"]
                    try:
                        model(**kwargs)
                    except _Stop:
                        pass
        finally:
            for h in hooks:
                h.remove()
        for name in names:
            lp = plan.layers[name]
            codes = None
            if name in accs:
                codes = gptq_codes(model.get_submodule(name), lp, plan, accs[name].hessian())
            set_module(model, name, quant_linear(model, name, lp, plan, ranges, ctx, codes))


def _finite_check(name: str, current: dict):
    def hook(module, args):
        require_finite(
            args[0], current["timestep"], "activation", f"at the input of layer '{name}'", error=NonFiniteError
        )

    return hook


@torch.no_grad()
def outputs(model: nn.Module, batches: Iterable[dict], check: Iterable[str] = ()) -> torch.Tensor:
    """Model outputs over calibration batches, concatenated (float32, CPU). Inputs of the
    `check` layers must be finite: a NaN/Inf is reported with its layer and timestep."""
    current: dict = {}
    hooks = [model.get_submodule(n).register_forward_pre_hook(_finite_check(n, current)) for n in check]
    try:
        out = []
        for kw in batches:
            current["timestep"] = kw["timestep"]
            out.append(model(**kw).sample.float().cpu())
        return torch.cat(out)
    finally:
        for h in hooks:
            h.remove()
