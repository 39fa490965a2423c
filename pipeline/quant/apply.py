"""Turn an FP DiT into a quantized one following a plan: the one entry point `quantize`.

    quantize(model, plan)                             round-to-nearest (with the plan's clipping search)
    quantize(model, plan, calibration=batches)        GPTQ, when the plan says `gptq: true`
    quantize(model, plan, ranges=act_ranges(stats, plan))   plans with static activations

Both replace the planned nn.Linear modules in place by QuantLinear. Saving and loading the
result is checkpoint.py; its size and cost are cost.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pipeline.errors import require_finite
from pipeline.quant.activation import TimestepContext, attach_timestep_context
from pipeline.quant.attention import QuantAttnProcessor
from pipeline.quant.errors import MissingRanges, NonFiniteError, PlanError
from pipeline.quant.gptq import HessianAccumulator, gptq_quantize
from pipeline.quant.linear import QuantLinear
from pipeline.quant.plan import LayerPlan, QuantPlan
from pipeline.quant.quantizer import FP_BITS

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
            m.set_processor(QuantAttnProcessor(plan.attn_bits))


def act_ranges(stats: dict[str, torch.Tensor], plan: QuantPlan) -> Ranges:
    """Per-tensor activation ranges for the static layers of a plan, from activation statistics
    (per-channel `{layer}/min` and `/max` [T, C] per calibrated timestep, `count`, `timesteps`):
    one per calibrated timestep (static_timestep) or one over all timesteps (static)."""
    out: Ranges = {}
    seen = stats["count"] > 0
    timesteps = stats["timesteps"][seen].float()
    for name, lp in plan.layers.items():
        if not lp.act_spec.static:
            continue
        if f"{name}/min" not in stats:
            raise MissingRanges(name)
        lo_t = stats[f"{name}/min"][seen].amin(1)
        hi_t = stats[f"{name}/max"][seen].amax(1)
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
    )


def quantize(
    model: nn.Module,
    plan: QuantPlan,
    *,
    ranges: Ranges | None = None,
    calibration: list[dict] | None = None,
    progress: bool = True,
) -> nn.Module:
    """Quantize every planned layer of `model` in place, as the plan says: round-to-nearest, or
    GPTQ (`plan.gptq`) from `calibration`, a list of model keyword arguments (batches of the
    denoiser's inputs). `ranges` holds the calibrated input ranges of static-activation layers."""
    plan.validate(linear_in_features(model))
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
            hooks.append(layer.register_forward_pre_hook(lambda m, args, acc=accs[name]: acc.add(args[0])))
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
                layer = model.get_submodule(name)
                codes = gptq_quantize(
                    layer.weight,
                    accs[name].hessian(),
                    lp.weight_bits,
                    lp.weight_granularity,
                    lp.weight_symmetric,
                    plan.clip_search,
                    plan.gptq_block_size,
                    plan.gptq_damp,
                )
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
