"""The base plan of the search: what params.yaml's `quant` section asks for, in the
quantization library's terms."""

from __future__ import annotations

from pipeline.errors import UserError
from pipeline.quant.plan import QuantPlan, build_plan


def plan_from_params(q, in_features: dict[str, int]):
    """The plan params.yaml's `quant` section asks for: the file `quant.plan` if set, else the
    uniform plan of `quant.method`, validated against the model's linears."""
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
            )
        plan.validate(in_features)
    except ValueError as e:  # PlanError
        raise UserError(f"quantization plan {q.plan or 'of quant.*'}: {e}") from None
    return plan
