"""Save and load a quantized model: the integer state of its QuantLinear modules as plain
tensors, and the modules rebuilt from them.

    quant_state(model, plan) -> {name: tensor}      load_quantized(model, plan, state): in place
    write_checkpoint(directory, plan, state)        read_checkpoint(directory) -> (plan, state)

A checkpoint directory holds plan.yaml (human-readable) and quantized.safetensors (codes,
float16 scales, integer zero points, biases, static activation ranges, low-rank branches in
float16, input transforms). A transform folded into FP layers (the adaLN modulation, the value
projection) is stored as its vectors and folded again on load, so the FP layers stay out of
the file.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from pipeline.quant.activation import ActQuantizer
from pipeline.quant.apply import linear_in_features, set_attention, set_module, timestep_context
from pipeline.quant.errors import StateError
from pipeline.quant.linear import QuantLinear
from pipeline.quant.packing import PACKED_BITS, pack_int4, unpack_int4
from pipeline.quant.plan import QuantPlan
from pipeline.quant.quantizer import FP_BITS
from pipeline.quant.transform import InputTransform, find_sites, fold


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
        for key in ("in_scale", "in_shift"):
            if getattr(m, key) is not None:
                out[f"{name}.{key}"] = getattr(m, key)
        if m.lowrank_rank:
            out[f"{name}.lowrank_down"] = m.lowrank_down.half()
            out[f"{name}.lowrank_up"] = m.lowrank_up.half()
    transforms = getattr(model, "input_transforms", {})
    for site in find_sites(model, list(plan.layers)) if transforms else []:
        t = transforms.get(site.consumers[0])
        if site.folded and t is not None:
            out[f"{site.consumers[0]}.fold_scale"] = t.scale
            if t.shift is not None:
                out[f"{site.consumers[0]}.fold_shift"] = t.shift
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def load_quantized(
    model: nn.Module, plan: QuantPlan, state: dict[str, torch.Tensor], source: str = "state"
) -> nn.Module:
    """Rebuild the QuantLinear modules of a plan from `quant_state` output, in place."""
    plan.validate(linear_in_features(model))
    ctx = timestep_context(model, plan)

    def get(key: str, shape=None) -> torch.Tensor:
        if key not in state:
            raise StateError(f"{source}: quantized state lacks '{key}'")
        t = state[key]
        if shape is not None and tuple(t.shape) != tuple(shape):
            raise StateError(
                f"{source}: '{key}' has shape {tuple(t.shape)}, the model needs {tuple(shape)}; "
                "it was made for another model"
            )
        return t

    transforms = {}
    for site in find_sites(model, list(plan.layers)):
        key = site.consumers[0]
        if site.folded and f"{key}.fold_scale" in state:
            shift = state.get(f"{key}.fold_shift")
            t = InputTransform(get(f"{key}.fold_scale").float(), None if shift is None else shift.float())
            fold(model, site, t)
            transforms |= dict.fromkeys(site.consumers, t)
    model.input_transforms = transforms

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
            lowrank_rank=lp.lowrank_rank,
            transform=(f"{name}.in_scale" in state, f"{name}.in_shift" in state),
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
            for key in ("in_scale", "in_shift"):
                if getattr(q, key) is not None:
                    getattr(q, key).copy_(get(f"{name}.{key}", (linear.in_features,)))
            if lp.lowrank_rank:
                q.lowrank_down.copy_(get(f"{name}.lowrank_down", q.lowrank_down.shape))
                q.lowrank_up.copy_(get(f"{name}.lowrank_up", q.lowrank_up.shape))
        set_module(model, name, q)
    set_attention(model, plan)
    return model


PLAN_FILE, STATE_FILE = "plan.yaml", "quantized.safetensors"


def write_checkpoint(directory: str | Path, plan: QuantPlan, state: dict[str, torch.Tensor]) -> None:
    """Through memory, so a full disk is the OSError it is (safetensors' own writer reports a
    SafetensorError that cannot be told from corruption)."""
    from safetensors.torch import save

    directory = Path(directory)
    (directory / PLAN_FILE).write_text(plan.to_yaml())
    (directory / STATE_FILE).write_bytes(save({k: v.contiguous() for k, v in state.items()}))


def read_checkpoint(directory: str | Path) -> tuple[QuantPlan, dict[str, torch.Tensor]]:
    """The plan and state of a checkpoint directory; PlanError or StateError naming the file."""
    from safetensors.torch import load_file

    directory = Path(directory)
    for p in (directory / PLAN_FILE, directory / STATE_FILE):
        if not p.is_file():
            raise StateError(f"{p}: not found (a quantized checkpoint is {PLAN_FILE} + {STATE_FILE})")
    plan = QuantPlan.read(directory / PLAN_FILE, written=True)
    try:
        state = load_file(str(directory / STATE_FILE))
    except Exception as e:
        raise StateError(f"{directory / STATE_FILE}: quantized checkpoint is corrupt ({e})") from None
    return plan, state
