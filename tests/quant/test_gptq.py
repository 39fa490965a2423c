import pytest
import torch

from pipeline.quant.gptq import HessianAccumulator, gptq_quantize
from pipeline.quant.granularity import Granularity, dequantize_weight, quantize_weight


def _problem(seed=0, n=2048, inp=64, out=32):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(inp, inp, generator=g) / inp**0.5 + torch.eye(inp)
    x = torch.randn(n, inp, generator=g) @ mix  # correlated inputs, as real activations are
    x[:, 3] *= 5
    w = torch.randn(out, inp, generator=g) / inp**0.5
    return x, w


@pytest.mark.parametrize("gran", [Granularity("group", 16), Granularity("group", 64), Granularity("channel")])
@pytest.mark.parametrize("bits", [3, 4])
def test_gptq_lowers_output_error_against_rtn(gran, bits):
    x, w = _problem()
    acc = HessianAccumulator(w.shape[1])
    for chunk in x.split(500):
        acc.add(chunk)
    codes, s, z = gptq_quantize(w, acc.hessian(), bits, gran)
    assert codes.max() <= 2**bits - 1 and s.shape == z.shape == (32, gran.groups(64))
    w_gptq = dequantize_weight(codes, s, z)
    w_rtn = dequantize_weight(*quantize_weight(w, bits, gran))
    err = lambda wq: ((x @ (wq - w).T).norm() / (x @ w.T).norm()).item()
    assert err(w_gptq) < 0.8 * err(w_rtn)


def test_hessian_accumulator_is_2_xtx_over_n():
    x = torch.randn(100, 8)
    acc = HessianAccumulator(8)
    acc.add(x[:30])
    acc.add(x[30:].reshape(7, 10, 8))
    assert torch.allclose(acc.hessian(), 2 * x.double().T @ x.double() / 100)


def test_gptq_refuses_per_tensor():
    with pytest.raises(ValueError, match="per-channel or per-group"):
        gptq_quantize(torch.randn(4, 8), torch.eye(8), 4, Granularity("tensor"))
