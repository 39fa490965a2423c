"""The int8 backend computes the fake-quant model's numbers with integer GEMMs."""

import pytest
import torch

from pipeline.quant.activation import ActQuantizer, ActSpec
from pipeline.quant.apply import outputs, quantize
from pipeline.quant.backends import use_backend
from pipeline.quant.errors import BackendError
from pipeline.quant.granularity import Granularity
from pipeline.quant.linear import QuantLinear
from tests.quant.test_apply import _batches, _fake_stats, _model, _plan, _rel

SETTINGS = {  # name: plan overrides
    "qdit W4A8 g16": {},
    "qdit W8A8 g16": {"weight_bits": 8},
    "qdit W4A4 g16": {"act_bits": 4},
    "qdit W3A6, activation groups 32 over weight groups 8": {
        "weight_bits": 3,
        "act_bits": 6,
        "group_size": 8,
        "act_group_size": 32,
    },
    "qdit W8A8, symmetric weights and activations": {"weight_bits": 8, "weight_symmetric": True, "act_symmetric": True},
    "rtn W8A8 (per channel, static per tensor)": {"method": "rtn", "weight_bits": 8},
    "qdit W4A8, static per timestep": {"act_mode": "static_timestep"},
}


@pytest.mark.parametrize("name", SETTINGS)
def test_int8_matches_fake_quant(name):
    batches = _batches()
    fp = outputs(_model(), batches)
    plan = _plan(_model(), **SETTINGS[name])
    stats = _fake_stats(_model())
    fake = quantize(_model(), plan, stats=stats)
    inputs = {}

    def keep(module, args, name):
        inputs.setdefault(name, args[0].clone())  # returns None: the forward's input is untouched

    hooks = [
        m.register_forward_pre_hook(lambda mod, args, n=n: keep(mod, args, n))
        for n, m in fake.named_modules()
        if isinstance(m, QuantLinear)
    ]
    ref = outputs(fake, batches)
    for h in hooks:
        h.remove()
    keys = set(fake.state_dict())
    integer = use_backend(quantize(_model(), plan, stats=stats), "int8")  # the same codes: RTN is deterministic
    assert sum(m.gemm is not None for m in integer.modules() if isinstance(m, QuantLinear)) == 12
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
    m = use_backend(quantize(model, plan), "int8").to(torch.bfloat16)
    gemm = m.get_submodule("transformer_blocks.0.attn1.to_q").gemm
    assert gemm.w_scale.dtype == torch.float32 and gemm.b_t.dtype == torch.int8


def test_unsupported_layers_are_refused_by_name():
    model = _model()
    with pytest.raises(
        BackendError,
        match=r"^backend 'int8': layer 'transformer_blocks\.0\.attn1\.to_q' has A16; "
        r"the int8 backend needs activations of at most 8 bits",
    ):
        use_backend(quantize(model, _plan(model, act_bits=16)), "int8")
    odd = QuantLinear(24, 8, True, 4, Granularity("group", 8), ActQuantizer(ActSpec(8, "dynamic", 12)))
    with pytest.raises(
        BackendError,
        match="weight groups of 8 and activation groups of 12 channels; the int8 backend needs one to divide the other",
    ):
        use_backend(torch.nn.Sequential(odd), "int8")
    with pytest.raises(BackendError, match="^backend 'fp4': unknown; allowed: fake, int8, fp8, int4$"):
        use_backend(_model(), "fp4")


def _quantized(backend=None, **plan_kw):
    model = _model()
    plan = _plan(model, **plan_kw)
    q = quantize(model, plan, stats=_fake_stats(_model()))
    return use_backend(q, backend) if backend else q


def test_fp8_gemm_is_the_e4m3_product_of_the_plans_weight_and_each_token():
    model = _quantized("fp8", weight_bits=8)
    layer = model.get_submodule("transformer_blocks.1.ff.net.2")
    x = torch.randn(3, 5, layer.in_features) * 4
    w8, s_w = layer.gemm.w8, layer.gemm.w_scale
    assert w8.dtype == torch.float8_e4m3fn and w8.shape == (layer.out_features, layer.in_features)
    # the weight is the plan's W^ (what fake uses), one scale per output channel, largest code 448
    w_hat = layer.dequantized_weight(torch.float32)
    assert torch.allclose(w8.float().abs().amax(1), torch.full((layer.out_features,), 448.0))
    assert _rel(w8.float() * s_w.T, w_hat) < 0.04  # E4M3 keeps 3 mantissa bits
    # each token scaled by its own amax / 448, the GEMM in float
    x2 = x.reshape(-1, layer.in_features)
    s_x = x2.abs().amax(1, keepdim=True) / 448
    expected = ((x2 / s_x).to(torch.float8_e4m3fn).double() * s_x) @ (w8.double() * s_w.T.double()).T + layer.bias
    assert _rel(layer(x).reshape(-1, layer.out_features), expected.float()) < 1e-6
    assert layer.gemm.w8.dtype == model.to(torch.bfloat16).get_submodule("transformer_blocks.1.ff.net.2").gemm.w8.dtype


@pytest.mark.parametrize("method", ["qdit", "rtn"])
def test_fp8_model_stays_within_e4m3_rounding_of_fake_quant(method):
    batches = _batches()
    fp = outputs(_model(), batches)
    fake = outputs(_quantized(weight_bits=8, method=method), batches)
    fp8 = outputs(_quantized("fp8", weight_bits=8, method=method), batches)
    # E4M3 rounds each operand to 1/16 relative: about 0.5 % here, against 0.07-0.3 % for the
    # plan's integer W8A8; bounded, and far from a broken GEMM
    assert 0 < _rel(fp8, fake) < 0.015
    assert _rel(fp8, fp) < 0.015


def test_fp8_refuses_what_it_cannot_compute(monkeypatch):
    with pytest.raises(
        BackendError,
        match=r"'fp8': layer 'transformer_blocks\.0\.attn1\.to_q' is W4A8; the fp8 "
        r"backend computes W8A8 \(use 'int4' for 4-bit weights",
    ):
        _quantized("fp8")
    with pytest.raises(BackendError, match=r"'fp8': layer '.*' is W8A16; the fp8 backend computes W8A8"):
        _quantized("fp8", weight_bits=8, act_bits=16)
    model = _quantized(weight_bits=8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA A100")
    with pytest.raises(
        BackendError,
        match=r"'fp8': needs an NVIDIA GPU of compute capability 8\.9 or newer "
        r"\(Ada, Hopper\); this GPU \(NVIDIA A100\) is 8\.0",
    ):
        use_backend(model, "fp8")
    assert all(m.gemm is None for m in model.modules() if isinstance(m, QuantLinear))  # left as it was


def _int4_runs():
    import os

    from pipeline.quant import lowbit_kernels

    return lowbit_kernels.triton is not None and (
        torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"
    )


def test_int4_without_triton_and_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # whatever this machine has
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    model = _quantized()
    with pytest.raises(BackendError, match=r"'int4': needs Triton and a CUDA GPU .* Use 'fake' \(the same numbers\)"):
        use_backend(model, "int4")
    assert all(m.qweight is not None for m in model.modules() if isinstance(m, QuantLinear))


@pytest.mark.skipif(not _int4_runs(), reason="the int4 kernel needs Triton on a CUDA GPU (or TRITON_INTERPRET=1)")
@pytest.mark.parametrize(
    "plan_kw", [{}, {"weight_bits": 3, "act_bits": 16}, {"method": "rtn"}, {"act_mode": "static_timestep"}]
)
def test_int4_matches_fake_quant_and_holds_the_weight_packed(plan_kw):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    batches = [{k: v.to(device) for k, v in b.items()} for b in _batches(2)]
    fake = _quantized(**plan_kw).to(device)
    ref = outputs(fake, batches)
    model = _quantized("int4", **plan_kw).to(device)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert all(m.qweight is None and m.gemm.packed.shape == (m.out_features, m.in_features // 2) for m in layers)
    # the same bf16/fp32 weights, summed in another order: float32 rounding only
    assert _rel(outputs(model, batches), ref) < 1e-5
    use_backend(model, "fake")  # and back: the codes are unpacked again
    assert torch.equal(outputs(model, batches), ref)


def test_int4_refuses_wide_weights_and_odd_groups():
    from pipeline.quant.backends import _check_layer

    with pytest.raises(
        BackendError, match=r"'int4': layer 'l' has W8; the int4 backend needs weights of at most 4 bits"
    ):
        _check_layer(_quantized(weight_bits=8).get_submodule("transformer_blocks.0.attn1.to_q"), "l", "int4")
    odd = QuantLinear(24, 8, True, 4, Granularity("group", 8), ActQuantizer(ActSpec(8, "dynamic")))
    with pytest.raises(
        BackendError,
        match=r"layer 'odd' has 24 input channels in groups of 8; the int4 kernel needs "
        r"groups of a multiple of 16 channels and input sizes of a multiple of 32",
    ):
        _check_layer(odd, "odd", "int4")
