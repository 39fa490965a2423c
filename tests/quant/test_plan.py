import pytest

from pipeline.quant.errors import PlanError
from pipeline.quant.plan import LayerPlan, QuantPlan, build_plan, describe
from pipeline.quant.targets import DEFAULT_INCLUDE

IN = {
    f"transformer_blocks.{b}.{n}": c
    for b in range(2)
    for n, c in [
        ("attn1.to_q", 128),
        ("attn1.to_k", 128),
        ("attn1.to_v", 128),
        ("attn1.to_out.0", 128),
        ("ff.net.0.proj", 128),
        ("ff.net.2", 512),
        ("norm1.linear", 128),
    ]
} | {"proj_out_1": 128}


def _build(**kw):
    args = (
        dict(
            method="qdit",
            include=DEFAULT_INCLUDE,
            exclude=[],
            weight_bits=4,
            group_size=32,
            weight_symmetric=False,
            clip_search=True,
            gptq=False,
            act_bits=8,
            act_mode="auto",
            act_group_size=None,
            act_symmetric=False,
            attn_bits=16,
        )
        | kw
    )
    return build_plan(IN, **args)


def test_methods_build_the_papers_settings():
    qdit = _build()
    assert len(qdit.layers) == 12 and "transformer_blocks.0.norm1.linear" not in qdit.layers
    lp = qdit.layers["transformer_blocks.1.ff.net.2"]
    assert (lp.granularity, lp.group_size, lp.act_mode, lp.act_group_size) == ("group", 32, "dynamic", 32)
    rtn = _build(method="rtn")
    lp = rtn.layers["transformer_blocks.0.attn1.to_q"]
    assert (lp.granularity, lp.act_mode) == ("channel", "static")
    assert _build(method="none").layers == {}
    assert _build(act_bits=16).layers["transformer_blocks.0.attn1.to_q"].act_mode == "none"
    ablation = _build(act_mode="static")  # + group-wise weights, static activations
    assert ablation.layers["transformer_blocks.0.attn1.to_q"].act_mode == "static"
    assert describe(qdit) == "qdit W4A8 (group 32, dynamic), 12 layers"


def test_yaml_round_trip(tmp_path):
    plan = _build(gptq=True)
    plan.layers["transformer_blocks.0.ff.net.2"] = LayerPlan(6, "group", 128, False, 8, "dynamic", 64, False)
    (tmp_path / "plan.yaml").write_text(plan.to_yaml())
    back = QuantPlan.read(tmp_path / "plan.yaml")
    assert back == plan
    back.validate(IN)


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (
            lambda p: p.layers.__setitem__("transformer_blocks.7.attn1.to_q", LayerPlan(4, "group", 32)),
            "plan names module 'transformer_blocks.7.attn1.to_q', which is not a Linear",
        ),
        (lambda p: setattr(p.layers["transformer_blocks.0.attn1.to_q"], "weight_bits", 12), "12 bits is not supported"),
        (
            lambda p: setattr(p.layers["transformer_blocks.0.ff.net.2"], "group_size", 48),
            "group size 48 does not divide its input size 512",
        ),
        (lambda p: setattr(p.layers["transformer_blocks.0.attn1.to_q"], "act_mode", "lazy"), "act_mode 'lazy'"),
    ],
)
def test_bad_plans_are_refused(edit, fragment):
    plan = _build()
    edit(plan)
    with pytest.raises(ValueError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        plan.validate(IN)


def test_group_size_that_does_not_divide_some_layer():
    with pytest.raises(ValueError, match="group size 48 does not divide its input size 128"):
        _build(group_size=48)


def test_include_pattern_that_matches_nothing():
    with pytest.raises(ValueError, match="matches no Linear"):
        _build(include=["blocks.*.attn.qkv"])


def test_unknown_plan_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown keys"):
        QuantPlan.from_dict({"method": "qdit", "bits": 4})
    with pytest.raises(ValueError, match="layer a: unknown keys"):
        QuantPlan.from_dict({"layers": {"a": {"wbits": 4}}})


def test_a_written_plan_cut_at_a_layer_boundary_is_refused(tmp_path):
    plan = _build()
    text = plan.to_yaml()
    assert text.rstrip().endswith(f"layer_count: {len(plan.layers)}")
    lines = text.splitlines(keepends=True)
    cut = max(i for i, line in enumerate(lines) if line.startswith("  ") and not line.startswith("    "))
    (tmp_path / "plan.yaml").write_text("".join(lines[:cut]))  # whole layers only, the last ones lost
    with pytest.raises(PlanError, match="lacks its last key, layer_count: it is cut short"):
        QuantPlan.read(tmp_path / "plan.yaml", written=True)
    assert len(QuantPlan.read(tmp_path / "plan.yaml").layers) == len(plan.layers) - 1  # a user's file may omit it
    (tmp_path / "plan.yaml").write_text("".join(lines[:cut]) + f"layer_count: {len(plan.layers)}\n")
    with pytest.raises(PlanError, match="layers where its layer_count says"):
        QuantPlan.read(tmp_path / "plan.yaml")
