"""The int8 backend computes the fake-quant model's numbers with integer GEMMs."""

import pytest
import torch

from pipeline.errors import UserError
from pipeline.quant.activation import ActQuantizer, ActSpec
from pipeline.quant.apply import act_ranges, outputs, quantize_model
from pipeline.quant.backends import use_backend
from pipeline.quant.granularity import Granularity
from pipeline.quant.linear import QuantLinear
from tests.quant.test_apply import _batches, _fake_stats, _model, _plan, _rel

SETTINGS = {  # name: plan overrides
    "qdit W4A8 g16": {},
    "qdit W8A8 g16": {"weight_bits": 8},
    "qdit W4A4 g16": {"act_bits": 4},
    "qdit W3A6, activation groups 32 over weight groups 8": {"weight_bits": 3, "act_bits": 6, "group_size": 8,
                                                              "act_group_size": 32},
    "qdit W8A8, symmetric weights and activations": {"weight_bits": 8, "weight_symmetric": True,
                                                      "act_symmetric": True},
    "rtn W8A8 (per channel, static per tensor)": {"method": "rtn", "weight_bits": 8},
    "qdit W4A8, static per timestep": {"act_mode": "static_timestep"},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_int8_matches_fake_quant(name):
    batches = _batches()
    fp = outputs(_model(), batches)
    plan = _plan(_model(), **SETTINGS[name])
    ranges = act_ranges(_fake_stats(_model()), plan)
    fake = quantize_model(_model(), plan, ranges)
    inputs = {}

    def keep(module, args, name):
        inputs.setdefault(name, args[0].clone())  # returns None: the forward's input is untouched

    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: keep(mod, args, n))
             for n, m in fake.named_modules() if isinstance(m, QuantLinear)]
    ref = outputs(fake, batches)
    for h in hooks:
        h.remove()
    keys = set(fake.state_dict())
    integer = use_backend(quantize_model(_model(), plan, ranges), "int8")  # the same codes: RTN is deterministic
    assert sum(m.int_gemm is not None for m in integer.modules() if isinstance(m, QuantLinear)) == 12
    assert set(integer.state_dict()) == keys  # nothing new is saved: rebuilt from the codes
    # layer by layer on the same input (the first batch's): equal up to float rounding
    for n, x in inputs.items():
        a, b = fake.get_submodule(n), integer.get_submodule(n)
        for ctx in (a.act.ctx, b.act.ctx):
            if ctx is not None:  # static per timestep: the ranges of that batch's timesteps
                ctx.timestep = batches[0]["timestep"]
        assert _rel(b(x), a(x)) < 1e-6, n
    # the whole model: a rounding difference can flip a later activation code by one step,
    # which stays far below the quantization error itself
    out = outputs(integer, batches)
    assert _rel(out, ref) < 0.05 * _rel(ref, fp)
    assert torch.equal(outputs(use_backend(integer, "fake"), batches), ref)  # and back


def test_int8_keeps_its_scales_in_float32_under_bf16():
    model = _model()
    plan = _plan(model)
    m = use_backend(quantize_model(model, plan), "int8").to(torch.bfloat16)
    gemm = m.get_submodule("transformer_blocks.0.attn1.to_q").int_gemm
    assert gemm.w_scale.dtype == torch.float32 and gemm.b_t.dtype == torch.int8


def test_unsupported_layers_are_refused_by_name():
    model = _model()
    with pytest.raises(UserError, match=r"needs activations of at most 8 bits; layer 'transformer_blocks\.0\.attn1\.to_q' "
                                        r"has A16"):
        use_backend(quantize_model(model, _plan(model, act_bits=16)), "int8")
    odd = QuantLinear(24, 8, True, 4, Granularity("group", 8), ActQuantizer(ActSpec(8, "dynamic", 12)))
    with pytest.raises(UserError, match="weight groups of 8 and activation groups of 12 channels; one must divide"):
        use_backend(torch.nn.Sequential(odd), "int8")
    with pytest.raises(UserError, match="quant.backend = 'fp4'; allowed: fake, int8"):
        use_backend(_model(), "fp4")
