import pytest
import torch
from scipy.stats import spearmanr

from pipeline.activation_stats import ActivationStats
from pipeline.quant.apply import outputs, prepare, quantize
from pipeline.quant.attention import log2_fake_quant
from pipeline.quant.checkpoint import load_quantized, quant_state
from pipeline.quant.cost import LayerShape, layer_cost
from pipeline.quant.errors import MissingRanges, PlanError
from pipeline.quant.linear import QuantLinear
from pipeline.quant.lowrank import split
from pipeline.quant.quantizer import fake_quant, qparams
from pipeline.quant.transform import TransformedLinear, act_salience, find_sites, repq, smoothing, spearman
from tests.quant.test_apply import _batches, _model, _plan, _rel

BLOCK = "transformer_blocks.0"
TIMESTEPS = torch.tensor([900, 600, 300, 50])


def _stats(model, batches):
    """Activation statistics as the stats stage writes them, one slot per distinct timestep."""
    acc = ActivationStats(model, len(TIMESTEPS))
    count = torch.zeros(len(TIMESTEPS), dtype=torch.long)
    with torch.no_grad():
        for kw in batches:
            slots = (kw["timestep"][:, None] - TIMESTEPS[None]).abs().argmin(1)
            count += torch.bincount(slots, minlength=len(TIMESTEPS))
            acc.set_slots(slots, kw["timestep"])
            model(**kw)
    acc.remove()
    return acc.tensors() | {"count": count, "timesteps": TIMESTEPS}


def _setup(**kw):
    model, batches = _model(), _batches()
    return model, batches, _stats(model, batches), _plan(model, **kw)


@pytest.mark.parametrize(
    "kw, explicit",
    [
        ({"method": "smoothquant"}, True),
        ({"method": "ptq4dit"}, False),
        ({"method": "repq"}, False),
        ({"method": "svdquant", "lowrank_rank": 4}, True),
        ({"method": "qdit", "smooth_alpha": 0.7}, True),
    ],
)
def test_folded_transforms_leave_the_fp_model_exact(kw, explicit):
    model, batches, stats, plan = _setup(**kw)
    ref = outputs(model, batches)
    mod_before = model.get_submodule(f"{BLOCK}.norm1.linear").weight.clone()
    prepared = prepare(model, plan, stats)
    out = outputs(model, batches)
    assert (out - ref).abs().max() <= 1e-5 * ref.abs().max()
    # the transforms really went somewhere: the modulation rows, and fc2 only where explicit
    assert not torch.equal(model.get_submodule(f"{BLOCK}.norm1.linear").weight, mod_before)
    assert isinstance(model.get_submodule(f"{BLOCK}.ff.net.2"), TransformedLinear) == explicit
    assert f"{BLOCK}.attn1.to_q" in prepared.transforms


def test_sites_of_a_dit_block():
    model = _model()
    names = [f"{BLOCK}.{n}" for n in ("attn1.to_q", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")]
    sites = {s.consumers[0]: s for s in find_sites(model, names)}
    qkv = sites[f"{BLOCK}.attn1.to_q"]
    assert qkv.consumers == tuple(f"{BLOCK}.attn1.to_{p}" for p in "qkv")  # to_k, to_v unplanned, still compensated
    assert (qkv.kind, qkv.producer, qkv.chunks) == ("modulation", f"{BLOCK}.norm1.linear", (0, 1))
    assert sites[f"{BLOCK}.ff.net.0.proj"].chunks == (3, 4)
    assert (sites[f"{BLOCK}.attn1.to_out.0"].kind, sites[f"{BLOCK}.attn1.to_out.0"].producer) == (
        "value",
        f"{BLOCK}.attn1.to_v",
    )
    assert sites[f"{BLOCK}.ff.net.2"].kind == "explicit"


def test_smoothing_at_half_balances_activation_and_weight_ranges():
    x, w = torch.tensor([100.0, 1.0, 4.0]), torch.tensor([0.5, 2.0, 4.0])
    s = smoothing(x, w, 0.5).scale
    assert torch.allclose(x / s, w * s)  # max|X_j / s_j| = max|W_j s_j|
    assert torch.allclose(smoothing(x, w, 1.0).scale, x)  # alpha 1: every range into the weights
    assert torch.equal(smoothing(torch.zeros(3), w, 0.5).scale > 0, torch.ones(3, dtype=torch.bool))


def test_spearman_salience_favours_the_timesteps_least_like_the_weights():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    absmax = torch.tensor([[1.0, 2.0, 3.0, 9.0], [9.0, 3.0, 2.0, 1.0]])  # rho +1 and -1
    assert torch.allclose(spearman(absmax, w), torch.tensor([1.0, -1.0], dtype=torch.float64))
    a = torch.rand(5, 12)
    b = torch.rand(12)
    assert torch.allclose(spearman(a, b), torch.tensor([spearmanr(r, b).statistic for r in a.numpy()]).double())
    sal = act_salience(absmax, w, "spearman")
    eta = torch.softmax(torch.tensor([-1.0, 1.0]), 0)
    assert torch.allclose(sal, eta[0] * absmax[0] + eta[1] * absmax[1])
    assert torch.equal(act_salience(absmax, w, "max"), torch.tensor([9.0, 3.0, 3.0, 9.0]))


def test_repq_reparameterisation_equals_per_channel_quantization():
    torch.manual_seed(0)
    lo, hi = -torch.rand(16) * torch.logspace(-1, 1, 16), torch.rand(16) * torch.logspace(1, -1, 16)
    x = lo + (hi - lo) * torch.rand(200, 16)
    t = repq(lo, hi, 8)
    s_c, z_c = qparams(lo, hi, 8, False, fp16_scale=False)
    per_channel = fake_quant(x, s_c, z_c, 8)
    xt = t.apply(x)
    s_t = ((hi - lo) / 255).mean()
    z_t = torch.round((torch.round(-lo / ((hi - lo) / 255))).mean())
    per_tensor = fake_quant(xt, s_t, z_t, 8) * t.scale + t.shift  # back to x's units
    # equal up to the rounding of the channel scales into one mean scale's grid
    assert (per_tensor - per_channel).abs().max() <= 1e-4 * (hi - lo).max()


def test_low_rank_split_is_exact_and_takes_the_top_singular_directions():
    torch.manual_seed(0)
    w = torch.randn(48, 32) + 5 * torch.randn(48, 1) @ torch.randn(1, 32)  # one strong direction
    down, up, r = split(w, 4)
    assert down.shape == (4, 32) and up.shape == (48, 4)
    assert torch.allclose(up @ down + r, w, atol=1e-5)
    assert r.norm() < 0.5 * w.norm()
    assert torch.linalg.svdvals(r)[0] <= torch.linalg.svdvals(w)[4] * 1.01  # the rest of the spectrum


def test_low_rank_branch_lowers_the_weight_error_at_w3():
    model, batches, stats, plan = _setup(method="qdit", weight_bits=3, act_bits=16)
    ref = outputs(model, batches)
    plain = _rel(outputs(quantize(_model(), plan), batches), ref)
    ranked = _rel(
        outputs(quantize(_model(), _plan(_model(), weight_bits=3, act_bits=16, lowrank_rank=8)), batches), ref
    )
    assert ranked < 0.8 * plain


@pytest.mark.parametrize(
    "kw",
    [
        {"method": "smoothquant"},
        {"method": "smoothquant", "act_mode": "dynamic"},
        {"method": "ptq4dit"},
        {"method": "repq", "attn_bits": 8},
        {"method": "svdquant", "group_size": 16, "lowrank_rank": 4},
        {"method": "qdit", "smooth_alpha": 0.5, "lowrank_rank": 4},
    ],
)
def test_every_method_quantizes_saves_and_loads(kw):
    model, batches, stats, plan = _setup(**kw)
    ref = outputs(model, batches)
    quantize(model, plan, stats=stats)
    out = outputs(model, batches)
    assert torch.isfinite(out).all() and 0 < _rel(out, ref) < 0.3
    fresh = load_quantized(_model(), plan, quant_state(model, plan))
    assert torch.equal(outputs(fresh, batches), out)


def test_smoothquant_beats_rtn_at_w8a8_on_an_outlier_channel():
    model, batches = _model(), _batches()
    with torch.no_grad():  # a channel of the attention input 30x the others, as in trained DiTs
        model.get_submodule(f"{BLOCK}.norm1.linear").bias[1 * 32 + 5] += 30.0
    ref = outputs(model, batches)
    stats = _stats(model, batches)

    def err(method):
        m = _model()
        m.load_state_dict(model.state_dict())
        return _rel(outputs(quantize(m, _plan(m, method=method, weight_bits=8, act_bits=8), stats=stats), batches), ref)

    assert err("smoothquant") < 0.7 * err("rtn")


def test_transforms_need_statistics_naming_the_layer():
    model, _, _, plan = _setup(method="smoothquant")
    with pytest.raises(MissingRanges, match="needs activation statistics"):
        quantize(model, plan)


def test_rank_that_grows_the_layer_is_refused():
    model = _model()  # linears 32 -> 32: at W4 a rank above 12 stores more than 16-bit weights
    with pytest.raises(PlanError, match=r"rank 13 makes the layer .* bigger than in 16 bits; allowed: 0 to 12"):
        quantize(model, _plan(model, lowrank_rank=13))
    with pytest.raises(PlanError, match="exceeds min"):
        quantize(_model(), _plan(_model(), lowrank_rank=40))
    with pytest.raises(PlanError, match="alpha 1.5"):
        _plan(_model(), smooth_alpha=1.5)


def test_cost_counts_the_branch_and_the_explicit_transform():
    plan = _plan(_model(), lowrank_rank=4)
    lp = plan.layers[f"{BLOCK}.ff.net.2"]
    shape = LayerShape(128, 32, tokens=16)
    base = layer_cost(type(lp)(**{**lp.__dict__, "lowrank_rank": 0}), shape)
    ranked = layer_cost(lp, shape)
    assert ranked.bits - base.bits == 16 * 4 * (128 + 32)
    assert ranked.bitops - base.bitops == 16 * 4 * (128 + 32) * 256
    explicit = layer_cost(lp, shape, explicit=True)
    assert (explicit.bits - ranked.bits, explicit.bitops - ranked.bitops) == (16 * 128, 16 * 128 * 256)


def test_quantized_model_keeps_the_explicit_transform_in_its_layer():
    model, batches, stats, plan = _setup(method="smoothquant")
    quantize(model, plan, stats=stats)
    fc2 = model.get_submodule(f"{BLOCK}.ff.net.2")
    assert isinstance(fc2, QuantLinear) and fc2.in_scale is not None and fc2.in_shift is None
    assert model.get_submodule(f"{BLOCK}.attn1.to_q").in_scale is None  # folded into adaLN


def test_log2_quantizer_levels():
    # 3 bits: levels 2^-k for k = 0..6, and 0 for what rounds below 2^-6
    p = torch.tensor([1.0, 0.5, 0.3, 0.26, 2**-6, 0.01, 1e-6, 0.0])
    assert log2_fake_quant(p, 3).tolist() == [1.0, 0.5, 0.25, 0.25, 2**-6, 0.0, 0.0, 0.0]


def test_weight_only_layers_keep_16_bit_inputs():
    model = _model()
    plan = _plan(model, weight_only=["transformer_blocks.*.norm1.linear"])
    lp = plan.layers[f"{BLOCK}.norm1.linear"]
    assert (lp.weight_bits, lp.act_bits, lp.group_size) == (4, 16, 16)
    assert plan.layers[f"{BLOCK}.attn1.to_q"].act_bits == 8
    batches = _batches()
    ref = outputs(model, batches)
    quantize(model, plan)
    assert isinstance(model.get_submodule(f"{BLOCK}.norm1.linear"), QuantLinear)
    assert 0 < _rel(outputs(model, batches), ref) < 0.3
