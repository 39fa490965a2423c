"""stages/plan.py: the plan params.yaml asks for, with the library's refusals in params' words."""

import pytest

from pipeline.config import load_params
from pipeline.errors import UserError
from pipeline.models import tiny
from stages.plan import plan_from_params
from tests.helpers import REPO
from tests.quant.test_apply import _model


def _cfg(*overrides):
    return load_params(REPO / "params.yaml", ["quant.weight.group_size=16", "search.group_sizes=[16]", *overrides])


def test_a_peer_and_its_options_become_the_plan():
    plan = plan_from_params(_cfg("quant.method=svdquant", "quant.lowrank.rank=4").quant, _model())
    assert plan.smooth_alpha == 0.5 and {lp.lowrank_rank for lp in plan.layers.values()} == {4}
    plan = plan_from_params(_cfg("quant.smooth.alpha=0.3").quant, _model())
    assert plan.method == "qdit" and plan.smooth_alpha == 0.3


@pytest.mark.parametrize(
    "rank, message",
    [
        (40, "quant.lowrank.rank = 40: transformer_blocks.0.attn1.to_q: low-rank rank 40 exceeds min(in, out) = 32"),
        (13, "quant.lowrank.rank = 13: transformer_blocks.0.attn1.to_q: low-rank rank 13 makes the layer"),
    ],
)
def test_a_rank_the_layers_cannot_take_is_named_by_its_key(rank, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan_from_params(_cfg(f"quant.lowrank.rank={rank}").quant, _model())


def test_the_reference_preset_quantizes_the_adaln_modulation_weight_only():
    from stages.preset import overrides

    sets = [s for s in overrides(REPO / "presets/paper-256-reference.yaml") if s.startswith("quant.")]
    model = tiny.build_tiny_dit(2, 4, 32, 2)  # hidden 128: groups of 128 fit
    plan = plan_from_params(load_params(REPO / "params.yaml", sets).quant, model)
    mod = plan.layers["transformer_blocks.0.norm1.linear"]
    assert (mod.weight_bits, mod.group_size, mod.act_bits, mod.act_mode) == (4, 128, 16, "none")
    assert plan.gptq and not plan.clip_search
    q = plan.layers["transformer_blocks.0.attn1.to_q"]
    assert (q.group_size, q.act_group_size, q.act_mode) == (128, 128, "dynamic")
