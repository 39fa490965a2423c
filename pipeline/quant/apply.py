"""Turn an FP DiT into a quantized one following a plan: RTN or GPTQ, save and load, size.

The one entry point is `quantize_model(model, plan, ...)` (RTN) or `gptq_model(...)`; both
replace the planned nn.Linear modules in place by QuantLinear. `quant_state` / `load_quantized`
move the integer state through safetensors-ready dicts.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pipeline.errors import UserError, require_finite
from pipeline.quant.activation import ActQuantizer, TimestepContext, attach_timestep_context
from pipeline.quant.attention import QuantAttnProcessor
from pipeline.quant.cost import LayerShape, weight_storage_bits
from pipeline.quant.gptq import HessianAccumulator, gptq_quantize
from pipeline.quant.linear import QuantLinear
from pipeline.quant.packing import PACKED_BITS, pack_int4, unpack_int4
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
    """Per-tensor activation ranges for the static layers of a plan, from the stats stage:
    one per calibrated timestep (static_timestep) or one over all timesteps (static)."""
    out: Ranges = {}
    seen = stats["count"] > 0
    timesteps = stats["timesteps"][seen].float()
    for name, lp in plan.layers.items():
        if not lp.act_spec.static:
            continue
        if f"{name}/min" not in stats:
            raise UserError(f"activation statistics have no entry for {name}; rerun the `stats` stage")
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


def quantize_model(model: nn.Module, plan: QuantPlan, ranges: Ranges | None = None) -> nn.Module:
    """Round-to-nearest (with the plan's clipping search) of every planned layer, in place."""
    plan.validate(linear_in_features(model))
    ctx = timestep_context(model, plan)
    for name, lp in plan.layers.items():
        set_module(model, name, quant_linear(model, name, lp, plan, ranges, ctx))
    set_attention(model, plan)
    return model


class _Stop(Exception):
    """Ends a calibration forward once the block being quantized has run."""


def _stages(plan: QuantPlan) -> list[tuple[str | None, list[str]]]:
    """Plan layers grouped per transformer block, in forward order; others last."""
    groups: dict[str | None, list[str]] = {}
    for name in plan.layers:
        parts = name.split(".")
        key = ".".join(parts[:2]) if parts[0] == "transformer_blocks" else None
        groups.setdefault(key, []).append(name)
    blocks = sorted((k for k in groups if k is not None), key=lambda k: int(k.split(".")[1]))
    return [(k, groups[k]) for k in blocks] + ([(None, groups[None])] if None in groups else [])


def gptq_model(
    model: nn.Module,
    plan: QuantPlan,
    batches: list[dict],
    ranges: Ranges | None = None,
    *,
    block_size: int = 128,
    damp: float = 0.01,
    progress: bool = True,
) -> nn.Module:
    """GPTQ block by block: the Hessians of block k's linears come from inputs that already
    passed through the quantized blocks 0..k-1, as they will at sampling time."""
    plan.validate(linear_in_features(model))
    ctx = timestep_context(model, plan)
    current: dict = {}
    stages = _stages(plan)
    for block_name, names in tqdm(stages, desc="GPTQ", disable=not progress, mininterval=2.0):
        accs = {}
        hooks = []
        for name in names:
            lp = plan.layers[name]
            if lp.weight_bits == FP_BITS:
                continue
            layer = model.get_submodule(name)
            accs[name] = HessianAccumulator(layer.in_features, layer.weight.device)
            hooks.append(layer.register_forward_pre_hook(_finite_check(name, current)))
            hooks.append(layer.register_forward_pre_hook(lambda m, args, name=name: accs[name].add(args[0])))
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
                    block_size,
                    damp,
                )
            set_module(model, name, quant_linear(model, name, lp, plan, ranges, ctx, codes))
    set_attention(model, plan)
    return model


def quant_state(model: nn.Module, plan: QuantPlan) -> dict[str, torch.Tensor]:
    """Integer codes (uint8; two per byte at 4 bits or fewer, see packing.py), float16 scales,
    integer zero points, biases, static act ranges."""
    out: dict[str, torch.Tensor] = {}
    for name in plan.layers:
        m: QuantLinear = model.get_submodule(name)
        if m.weight_bits == FP_BITS:
            out[f"{name}.weight"] = m.weight.detach()
        else:
            if m.weight_bits <= PACKED_BITS:
                out[f"{name}.qweight_int4"] = pack_int4(m.codes().cpu())
            else:
                out[f"{name}.qweight"] = m.qweight
            out[f"{name}.w_scale"] = m.w_scale.half()
            out[f"{name}.w_zero"] = m.w_zero.to(torch.uint8)
        if m.bias is not None:
            out[f"{name}.bias"] = m.bias
        if m.act.is_static:
            out[f"{name}.act.scale"] = m.act.scale.half()
            out[f"{name}.act.zero"] = m.act.zero.to(torch.uint8)
            out[f"{name}.act.timesteps"] = m.act.timesteps
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def load_quantized(
    model: nn.Module, plan: QuantPlan, state: dict[str, torch.Tensor], source: str = "state"
) -> nn.Module:
    """Rebuild the QuantLinear modules of a plan from `quant_state` output, in place."""
    try:
        plan.validate(linear_in_features(model))
    except ValueError as e:
        raise UserError(f"{source}: {e}") from None
    ctx = timestep_context(model, plan)

    def get(key: str, shape=None) -> torch.Tensor:
        if key not in state:
            raise UserError(f"{source}: quantized state lacks '{key}'; rerun the `quantize` stage")
        t = state[key]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise UserError(
                f"{source}: '{key}' has shape {tuple(t.shape)}, the model needs {tuple(shape)}; "
                "it was made for another model"
            )
        return t

    for name, lp in plan.layers.items():
        linear = model.get_submodule(name)
        static = (
            (get(f"{name}.act.scale"), get(f"{name}.act.zero"), get(f"{name}.act.timesteps"))
            if lp.act_spec.static
            else None
        )
        act = ActQuantizer(lp.act_spec, static, ctx)
        q = QuantLinear(
            linear.in_features,
            linear.out_features,
            linear.bias is not None,
            lp.weight_bits,
            lp.weight_granularity,
            act,
            dtype=linear.weight.dtype,
            weight_symmetric=lp.weight_symmetric,
        ).to(linear.weight.device)
        with torch.no_grad():
            if lp.weight_bits == FP_BITS:
                q.weight.copy_(get(f"{name}.weight", linear.weight.shape))
            else:
                if f"{name}.qweight_int4" in state:
                    packed = get(f"{name}.qweight_int4", (linear.out_features, (linear.in_features + 1) // 2))
                    q.qweight.copy_(unpack_int4(packed, linear.in_features))
                else:
                    q.qweight.copy_(get(f"{name}.qweight", linear.weight.shape))
                q.w_scale.copy_(get(f"{name}.w_scale", q.w_scale.shape).float())
                q.w_zero.copy_(get(f"{name}.w_zero", q.w_zero.shape).float())
            if linear.bias is not None:
                q.bias.copy_(get(f"{name}.bias", linear.bias.shape))
        set_module(model, name, q)
    set_attention(model, plan)
    return model


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
    for name, p in model.named_parameters():
        if not any(name.startswith(q + ".") for q in inside):
            fp16_bits += 16 * p.numel()
            q_bits += 16 * p.numel()
    return {"size_mb": q_bits / 8e6, "fp16_size_mb": fp16_bits / 8e6}


def _finite_check(name: str, current: dict):
    def hook(module, args):
        require_finite(args[0], current["timestep"], "activation", f"at the input of layer '{name}'")

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


@torch.no_grad()
def measure_shapes(model: nn.Module, names: Iterable[str], kwargs: dict) -> dict[str, LayerShape]:
    """Each named linear's shape and input rows per image, from one forward of `kwargs`
    (DiT: the patch tokens; rows / batch size, so classifier-free guidance does not count)."""
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
    out = {}
    for n in names:
        m = model.get_submodule(n)
        out[n] = LayerShape(m.in_features, m.out_features, rows.get(n, 0) // images, m.bias is not None)
    return out
