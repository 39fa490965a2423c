"""The base plan of the search: what params.yaml's `quant` section asks for, in the
quantization library's terms."""

from __future__ import annotations

import torch.nn as nn

from pipeline.errors import UserError
from pipeline.quant.errors import PlanError
from pipeline.quant.plan import QuantPlan, build_plan


def plan_from_params(q, model: nn.Module):
    """The plan params.yaml's `quant` section asks for: the file `quant.plan` if set, else the
    uniform plan of `quant.method`, validated against the model's linears."""
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    in_features = {n: m.in_features for n, m in linears.items()}
    out_features = {n: m.out_features for n, m in linears.items()}
    try:
        if q.plan:
            plan = QuantPlan.read(q.plan)
        else:
            plan = build_plan(
                in_features,
                method=q.method,
                include=list(q.include),
                exclude=list(q.exclude),
                weight_bits=q.weight.bits,
                group_size=q.weight.group_size,
                weight_symmetric=q.weight.symmetric,
                clip_search=q.weight.clip_search,
                gptq=q.weight.gptq,
                act_bits=q.act.bits,
                act_mode=q.act.mode,
                act_group_size=q.act.group_size,
                act_symmetric=q.act.symmetric,
                attn_bits=q.attn_bits,
                gptq_block_size=q.gptq.block_size,
                gptq_damp=q.gptq.damp,
                smooth_alpha=q.smooth.alpha,
                lowrank_rank=q.lowrank.rank,
                weight_only=list(q.weight_only),
            )
        plan.validate(in_features, out_features)
    except PlanError as e:
        key = "quant.lowrank.rank" if "low-rank" in str(e) and not q.plan else None
        where = f"{key} = {q.lowrank.rank}: " if key else f"quantization plan {q.plan or 'of quant.*'}: "
        raise UserError(f"{where}{e}") from None
    return plan
