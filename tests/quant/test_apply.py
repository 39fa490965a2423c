import pytest
import torch

from pipeline.models import tiny
from pipeline.quant.apply import act_ranges, linear_in_features, outputs, quantize
from pipeline.quant.attention import QuantAttnProcessor
from pipeline.quant.checkpoint import load_quantized, quant_state
from pipeline.quant.cost import model_size
from pipeline.quant.errors import NonFiniteError, StateError
from pipeline.quant.linear import QuantLinear
from pipeline.quant.plan import build_plan
from pipeline.quant.targets import DEFAULT_INCLUDE


def _model(seed=0):
    torch.manual_seed(seed)
    model = tiny.build_tiny_dit(2, 2, 16, 2)  # hidden 32, ff 128
    for name, p in model.named_parameters():  # a trained DiT is not adaLN-zero any more
        if "norm1.linear" in name or "proj_out_2" in name:
            p.data.normal_(0, 0.05)
    return model.eval()


def _batches(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "hidden_states": torch.randn(6, 1, 8, 8, generator=g),
            "timestep": torch.randint(0, 1000, (6,), generator=g),
            "class_labels": torch.randint(0, 10, (6,), generator=g),
        }
        for _ in range(n)
    ]


def _plan(model, **kw):
    args = (
        dict(
            method="qdit",
            include=DEFAULT_INCLUDE,
            exclude=[],
            weight_bits=4,
            group_size=16,
            weight_symmetric=False,
            clip_search=False,
            gptq=False,
            act_bits=8,
            act_mode="auto",
            act_group_size=None,
            act_symmetric=False,
            attn_bits=16,
        )
        | kw
    )
    return build_plan(linear_in_features(model), **args)


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize(
    "wbits, abits, bound", [(8, 8, 0.02), (6, 8, 0.04), (4, 8, 0.15), (4, 16, 0.15), (16, 8, 0.02), (4, 4, 0.4)]
)
def test_quantized_forward_differs_from_fp_by_a_bounded_nonzero_amount(wbits, abits, bound):
    model, batches = _model(), _batches()
    ref = outputs(model, batches)
    quantize(model, _plan(model, weight_bits=wbits, act_bits=abits))
    assert sum(isinstance(m, QuantLinear) for m in model.modules()) == 12
    err = _rel(outputs(model, batches), ref)
    assert 0 < err < bound


def test_more_bits_less_error():
    batches = _batches()
    ref = outputs(_model(), batches)
    errs = []
    for bits in (3, 4, 6, 8):
        m = quantize(_model(), _plan(_model(), weight_bits=bits, act_bits=16))
        errs.append(_rel(outputs(m, batches), ref))
    assert errs == sorted(errs, reverse=True)


def test_save_load_round_trip_gives_identical_outputs():
    batches = _batches()
    model = _model()
    stats = _fake_stats(model)
    plan = _plan(model, weight_bits=4, act_bits=8, act_mode="static_timestep")
    quantize(model, plan, stats=stats)
    state = quant_state(model, plan)
    q = model.get_submodule("transformer_blocks.0.attn1.to_q")
    packed = state["transformer_blocks.0.attn1.to_q.qweight_int4"]  # 4 bits: two codes per byte
    assert packed.dtype == torch.uint8 and packed.shape == (q.out_features, q.in_features // 2)
    assert state["transformer_blocks.0.attn1.to_q.w_scale"].dtype == torch.float16
    fresh = load_quantized(_model(), plan, state)
    assert torch.equal(outputs(fresh, batches), outputs(model, batches))
    # checkpoints written before packing (one code per byte) still load
    old = {k.replace(".qweight_int4", ".qweight"): v for k, v in state.items()}
    for name in plan.layers:
        old[f"{name}.qweight"] = model.get_submodule(name).qweight.clone()
    assert torch.equal(outputs(load_quantized(_model(), plan, old), batches), outputs(model, batches))
    del state["transformer_blocks.1.ff.net.2.qweight_int4"]
    with pytest.raises(StateError, match="lacks 'transformer_blocks.1.ff.net.2.qweight'"):
        load_quantized(_model(), plan, state)


def test_eight_bit_codes_stay_one_per_byte():
    model = _model()
    plan = _plan(model, weight_bits=8, act_bits=8)
    state = quant_state(quantize(model, plan), plan)
    assert not [k for k in state if k.endswith("qweight_int4")]
    q = model.get_submodule("transformer_blocks.0.attn1.to_q")
    assert torch.equal(state["transformer_blocks.0.attn1.to_q.qweight"], q.qweight)


def _fake_stats(model):
    stats = {"count": torch.tensor([2, 2, 0]), "timesteps": torch.tensor([900, 500, 100])}
    for name, c in linear_in_features(model).items():
        stats[f"{name}/min"] = -torch.rand(3, c) * 3
        stats[f"{name}/max"] = torch.rand(3, c) * 3
    return stats


def test_static_ranges_come_from_seen_timesteps():
    model = _model()
    stats = _fake_stats(model)
    plan = _plan(model, act_mode="static_timestep")
    r = act_ranges(stats, plan)["transformer_blocks.0.attn1.to_q"]
    assert r[2].tolist() == [900.0, 500.0]  # timestep 100 had no calibration records
    assert torch.equal(r[0], stats["transformer_blocks.0.attn1.to_q/min"][:2].amin(1))
    g = act_ranges(stats, _plan(model, method="rtn"))["transformer_blocks.0.attn1.to_q"]
    assert g[0].shape == (1,) and g[0] == r[0].min()


def test_gptq_model_beats_rtn_on_its_calibration_data():
    batches = _batches(6)
    ref = outputs(_model(), batches)
    rtn = quantize(_model(), _plan(_model(), weight_bits=3, act_bits=16))
    gptq = quantize(
        _model(), _plan(_model(), weight_bits=3, act_bits=16, gptq=True), calibration=batches, progress=False
    )
    assert _rel(outputs(gptq, batches), ref) < _rel(outputs(rtn, batches), ref)


def test_gptq_names_layer_and_timestep_of_nan_input():
    model, batches = _model(), _batches()
    with torch.no_grad():
        model.transformer_blocks[0].norm1.linear.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"layer 'transformer_blocks\.0\.attn1\.to_q' at timestep \d+"):
        quantize(model, _plan(model, gptq=True), calibration=batches, progress=False)


def test_model_size_counts_bits_scales_and_zero_points():
    model = _model()
    fp_params = sum(p.numel() for p in model.parameters())
    plan = _plan(model, weight_bits=4, act_bits=8)
    quantize(model, plan)
    size = model_size(model)
    assert size["fp16_size_mb"] == pytest.approx(fp_params * 2 / 1e6)
    saved = 0
    for name in plan.layers:
        m = model.get_submodule(name)
        n = m.in_features * m.out_features
        saved += 16 * n - (4 * n + (m.in_features // 16) * m.out_features * (16 + 4))
    assert size["size_mb"] == pytest.approx((fp_params * 16 - saved) / 8e6)


def test_attention_processor_matches_diffusers_at_16_bits_and_quantizes_below():
    model, batches = _model(), _batches(2)
    ref = outputs(model, batches)
    for block in model.transformer_blocks:
        block.attn1.set_processor(QuantAttnProcessor(16))
    assert torch.allclose(outputs(model, batches), ref, atol=1e-5)
    for block in model.transformer_blocks:
        block.attn1.set_processor(QuantAttnProcessor(4))
    assert 0.001 < _rel(outputs(model, batches), ref) < 0.5
    plan = _plan(_model(), attn_bits=8)
    m = quantize(_model(), plan)
    assert isinstance(m.transformer_blocks[1].attn1.processor, QuantAttnProcessor)
