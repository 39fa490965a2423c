import pytest
import torch

from pipeline.quant.apply import linear_in_features, quantize
from pipeline.quant.cost import LayerShape, layer_cost, measure_shapes, model_size, plan_cost
from pipeline.quant.plan import LayerPlan
from tests.quant.test_apply import _batches, _model, _plan


def test_group_wise_w4a8_by_hand():
    lp = LayerPlan(4, "group", 4, False, 8, "dynamic", 4, False)
    cost = layer_cost(lp, LayerShape(8, 4, tokens=3))
    # 32 weights x 4 bits + 8 groups x (16-bit scale + 4-bit zero) + 4 biases x 16
    assert cost.bits == 32 * 4 + 8 * 20 + 4 * 16
    # per token and output: 8 MACs of 4 x 8 bits + 2 group rescales of 16 x 16
    assert cost.bitops == 3 * 4 * (8 * 4 * 8 + 2 * 256)


@pytest.mark.parametrize("g_w, g_a, segments", [(4, 4, 2), (4, 8, 2), (4, 2, 4), (8, 2, 4), (2, 4, 4)])
def test_rescales_count_the_runs_cut_by_both_groupings(g_w, g_a, segments):
    lp = LayerPlan(4, "group", g_w, True, 8, "dynamic", g_a, False)
    cost = layer_cost(lp, LayerShape(8, 1, tokens=1, bias=False))
    assert cost.bitops == 8 * 4 * 8 + segments * 256
    assert cost.bits == 8 * 4 + (8 // g_w) * 16  # symmetric: no zero points


def test_unquantized_and_per_channel_layers():
    fp = layer_cost(LayerPlan(), LayerShape(8, 4, tokens=2))
    assert fp.bits == 16 * 32 + 16 * 4 and fp.bitops == 2 * 4 * 8 * 16 * 16  # no rescale at all
    static = LayerPlan(8, "channel", None, False, 8, "static", None, False)
    c = layer_cost(static, LayerShape(8, 4, tokens=2))
    assert c.bits == 8 * 32 + 4 * (16 + 8) + 16 * 4 and c.bitops == 2 * 4 * (8 * 64 + 256)


def test_smaller_groups_cost_more_bytes_and_bitops():
    costs = [
        layer_cost(LayerPlan(4, "group", g, False, 8, "dynamic", g, False), LayerShape(128, 64, 16))
        for g in (16, 32, 64, 128)
    ]
    assert all(a.bits > b.bits and a.bitops > b.bitops for a, b in zip(costs, costs[1:]))


def test_plan_cost_matches_the_size_of_the_quantized_model():
    model = _model()
    batch = _batches(1)[0]
    plan = _plan(model)
    names = list(plan.layers)
    plan.layers[names[0]].group_size = plan.layers[names[0]].act_group_size = 32
    plan.layers[names[1]].weight_bits = 16
    shapes = measure_shapes(model, names, batch)
    assert {s.tokens for s in shapes.values()} == {16}  # 8x8 pixels in 2x2 patches
    rest = sum(p.numel() for n, p in model.named_parameters() if n.rpartition(".")[0] not in plan.layers)
    before = plan_cost(plan, shapes)
    quantize(model, plan)
    assert model_size(model)["size_mb"] * 8e6 == pytest.approx(before.bits + 16 * rest, abs=1e-3)


def test_tokens_are_per_image_with_guidance():
    model = _model()
    batch = _batches(1)[0]
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
    names = list(linear_in_features(model))[:3]
    assert measure_shapes(model, names, batch) == measure_shapes(model, names, doubled)
