import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.quant.activation import ActSpec, dynamic_fake_quant
from pipeline.quant.granularity import Granularity, dequantize_weight
from pipeline.quant.linear import QuantLinear


def _linear(seed=0):
    torch.manual_seed(seed)
    return nn.Linear(32, 16)


@pytest.mark.parametrize("wbits, abits", [(8, 8), (6, 8), (4, 8), (4, 16), (16, 8), (4, 4)])
def test_forward_is_exactly_the_formulas(wbits, abits):
    lin = _linear()
    gran = Granularity("group", 8)
    q = QuantLinear.from_linear(lin, wbits, gran, ActSpec(abits, "dynamic", 8))
    x = torch.randn(2, 5, 32)
    if wbits == 16:
        w_hat = lin.weight
        assert q.weight.dtype == torch.float32
    else:
        assert q.qweight.dtype == torch.uint8 and not hasattr(q, "weight")  # codes, not a float copy
        assert q.qweight.max() <= 2**wbits - 1
        w_hat = dequantize_weight(q.qweight, q.w_scale, q.w_zero)
    x_hat = x if abits == 16 else dynamic_fake_quant(x, abits, 8)
    assert torch.equal(q(x), F.linear(x_hat, w_hat, lin.bias))
    err = ((q(x) - lin(x)).norm() / lin(x).norm()).item()
    bound = {8: 0.02, 6: 0.05, 4: 0.2, 16: 0.02}[min(wbits, abits)]
    assert 0 < err < bound


def test_w16a16_is_the_linear():
    lin = _linear()
    q = QuantLinear.from_linear(lin, 16, Granularity("group", 8), ActSpec(16, "none"))
    x = torch.randn(4, 32)
    assert torch.equal(q(x), lin(x))


def test_bf16_model_runs_in_bf16():
    lin = _linear().to(torch.bfloat16)
    q = QuantLinear.from_linear(lin, 4, Granularity("group", 8), ActSpec(8, "dynamic", 8))
    out = q(torch.randn(3, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_casting_to_bf16_keeps_quantization_parameters_in_float32():
    from pipeline.quant.activation import ActQuantizer

    lin = _linear()
    q = QuantLinear.from_linear(lin, 4, Granularity("group", 8), ActSpec(8, "dynamic", 8))
    scale = q.w_scale.clone()
    q.to(torch.bfloat16)
    assert q.w_scale.dtype == torch.float32 and torch.equal(q.w_scale, scale)
    assert q.bias.dtype == torch.bfloat16 and q.qweight.dtype == torch.uint8
    act = ActQuantizer.from_ranges(
        ActSpec(8, "static_timestep"),
        (torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0]), torch.tensor([981.0, 21.0])),
    )
    act.to(torch.bfloat16)
    assert act.timesteps.tolist() == [981.0, 21.0] and act.scale.dtype == torch.float32
