import numpy as np
import pytest

from pipeline.quant.cost import LayerShape
from pipeline.quant.plan import LayerPlan, QuantPlan
from pipeline.search.space import SearchSpace


def _space(group_sizes=(16, 32, 64, 128), base_g=32, act_g=None, extra_fp=False):
    layers = {
        "a": LayerPlan(4, "group", base_g, False, 8, "dynamic", act_g or base_g, False),
        "b": LayerPlan(4, "group", base_g, False, 8, "dynamic", act_g or base_g, False),
        "c": LayerPlan(4, "group", base_g, False, 8, "dynamic", act_g or base_g, False),
    }
    shapes = {"a": LayerShape(128, 128, 16), "b": LayerShape(96, 128, 16), "c": LayerShape(512, 128, 16)}
    if extra_fp:
        layers["d"] = LayerPlan(4, "channel", None, False, 8, "static", None, False)
        shapes["d"] = LayerShape(128, 64, 16)
    return SearchSpace(QuantPlan("qdit", layers=layers), shapes, list(group_sizes))


def test_candidates_are_the_divisors_of_each_input_size():
    space = _space(extra_fp=True)
    assert space.genes == ["a", "b", "c"]  # the per-channel layer is no gene
    assert space.candidates == {"a": [16, 32, 64, 128], "b": [16, 32], "c": [16, 32, 64, 128]}
    assert space.base_genome == (32, 32, 32)


def test_no_candidate_for_a_layer_is_refused_with_its_divisors():
    with pytest.raises(ValueError, match=r"none divides the input size 96 of layer b.*divisors of 96: 2, 3, 4, 6, 8"):
        _space(group_sizes=(64, 128), base_g=64)


def test_base_group_size_must_be_a_candidate():
    with pytest.raises(ValueError, match="base plan's group size 32 is not among its candidates"):
        _space(group_sizes=(16,), base_g=32)


def test_plan_of_a_genome_moves_activation_groups_with_weights_only_when_they_were_tied():
    tied = _space().plan((16, 32, 128))
    assert [(lp.group_size, lp.act_group_size) for lp in tied.layers.values()] == [(16, 16), (32, 32), (128, 128)]
    apart = _space(act_g=16).plan((64, 32, 128))
    assert [lp.act_group_size for lp in apart.layers.values()] == [16, 16, 16]
    assert _space().plan(_space().base_genome).layers == _space().base.layers


def test_costs_add_up_and_larger_groups_are_cheaper():
    space = _space()
    for metric in ("bitops", "size"):
        assert (
            space.cost((128, 32, 128)).value(metric)
            < space.cost((32, 32, 32)).value(metric)
            < space.cost((16, 16, 16)).value(metric)
        )
        assert space.cheapest(metric) == space.cost((128, 32, 128))


def test_repair_fits_the_budget_by_coarsening_only():
    space = _space()
    budget = space.cost(space.base_genome).value("bitops")
    rng = np.random.default_rng(0)
    for _ in range(50):
        genome = space.random(rng)
        fixed = space.repair(genome, budget, "bitops", rng)
        assert space.cost(fixed).value("bitops") <= budget
        assert all(f >= g for f, g in zip(fixed, genome))
        if space.cost(genome).value("bitops") <= budget:
            assert fixed == genome
