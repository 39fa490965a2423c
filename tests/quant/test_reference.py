"""The quantizer against references that share none of its code: a brute-force float64 loop
over every group and element, written from the formulas, and torchao's affine primitives
(asymmetric, block (1, g), quant range 0..2^b-1, float32 scales).

Codes may differ only where the float64 value sits within a rounding of a half-integer
(float32 and float64 then round to different sides); everything else must match exactly.
"""

from __future__ import annotations

import math

import pytest
import torch

from pipeline.quant.activation import ActQuantizer, ActSpec, dynamic_qparams
from pipeline.quant.granularity import Granularity, quantize_weight
from pipeline.quant.linear import QuantLinear
from pipeline.quant.quantizer import quantize

TIE = 1e-4  # |x/s - (k + 1/2)| below this: float32 and float64 may round apart


def _fp16_up(value: float) -> float:
    """The smallest float16 >= value (how stored scales are rounded), in float64."""
    h = torch.tensor(value, dtype=torch.float64).half().double().item()
    if h < value:
        h = torch.nextafter(torch.tensor(h, dtype=torch.float16), torch.tensor(math.inf, dtype=torch.float16)).item()
    return h


def _brute_group(
    values: list[float], bits: int, symmetric: bool, fp16: bool
) -> tuple[float, float, list[int], list[bool]]:
    """scale, zero, codes of one group by the formulas, element by element; and which
    elements sit at a rounding tie."""
    lo, hi = min(min(values), 0.0), max(max(values), 0.0)
    top = 2**bits - 1
    if symmetric:
        s = max(hi, -lo) / (2 ** (bits - 1) - 1)
    else:
        s = (hi - lo) / top
    s = max(s, 1e-8)
    if fp16:
        s = max(_fp16_up(s), 6e-8)
    z = float(2 ** (bits - 1)) if symmetric else min(max(round(-lo / s), 0), top)
    codes, ties = [], []
    for v in values:
        r = v / s
        codes.append(int(min(max(round(r) + z, 0), top)))  # half to even, as torch.round
        ties.append(abs(abs(r - math.floor(r)) - 0.5) < TIE)
    return s, z, codes, ties


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("gran", [Granularity("group", 8), Granularity("channel"), Granularity("tensor")])
def test_weight_quantization_equals_a_float64_loop(bits, symmetric, gran):
    w = torch.randn(6, 32, generator=torch.Generator().manual_seed(bits)) * torch.linspace(0.1, 3, 32)
    codes, scale, zero = quantize_weight(w, bits, gran, symmetric)
    rows = w.double().tolist()
    g = gran.group_size if gran.kind == "group" else 32
    groups = [(r, c) for r in range(6) for c in range(0, 32, g)] if gran.kind != "tensor" else [(None, 0)]
    for r, c in groups:
        values = [x for row in rows for x in row] if r is None else rows[r][c : c + g]
        s, z, ref, ties = _brute_group(values, bits, symmetric, fp16=True)
        sr, gr = (0, 0) if r is None else (r, c // g)
        assert scale[sr, gr].item() == pytest.approx(s, rel=1e-6) and zero[sr, gr].item() == z
        got = codes.reshape(-1).tolist() if r is None else codes[r, c : c + g].tolist()
        assert all(a == b or tie for a, b, tie in zip(got, ref, ties)), (r, c)
        assert sum(a != b for a, b in zip(got, ref)) <= sum(ties)


@pytest.mark.parametrize("bits, g", [(4, 16), (8, 32), (3, 64)])
def test_quant_linear_forward_equals_a_float64_loop(bits, g):
    """y = x^ W^T + b: the weight's codes dequantized, each token's groups quantized on their
    own min/max (dynamic), all computed here in float64 from the same formulas."""
    gen = torch.Generator().manual_seed(g)
    linear = torch.nn.Linear(64, 5).requires_grad_(False)
    linear.weight.copy_(torch.randn(5, 64, generator=gen))
    layer = QuantLinear.from_linear(linear, 4, Granularity("group", 16), ActSpec(bits, "dynamic", g))
    x = torch.randn(3, 64, generator=gen) * 2
    y = layer(x).double()
    w_hat = [
        [
            (layer.qweight[o, k].item() - layer.w_zero[o, k // 16].item()) * layer.w_scale[o, k // 16].item()
            for k in range(64)
        ]
        for o in range(5)
    ]
    x_q = layer.act(x).double()  # the layer's own quantized input
    for t in range(3):
        x_hat = []
        for c in range(0, 64, g):
            values = x[t, c : c + g].double().tolist()
            s, z, codes, ties = _brute_group(values, bits, False, fp16=False)
            for k, (q, tie) in enumerate(zip(codes, ties)):
                ours = x_q[t, c + k].item()
                assert ours == pytest.approx((q - z) * s, rel=1e-6, abs=1e-7) or (
                    tie and abs(ours - (q - z) * s) == pytest.approx(s, rel=1e-5)
                )
                x_hat.append(ours if tie else (q - z) * s)  # at a tie either side is right
        for o in range(5):
            ref = sum(a * b for a, b in zip(x_hat, w_hat[o])) + linear.bias[o].item()
            assert y[t, o].item() == pytest.approx(ref, rel=1e-5, abs=1e-5)


def test_static_activations_use_the_calibrated_range_as_given():
    spec = ActSpec(8, "static")
    act = ActQuantizer.from_ranges(spec, (torch.tensor([-1.5]), torch.tensor([2.0]), torch.zeros(1)))
    x = torch.linspace(-3, 3, 101)
    s, z, codes, _ = _brute_group([-1.5, 2.0], 8, False, fp16=True)
    ref = torch.tensor([(min(max(round(v / s) + z, 0), 255) - z) * s for v in x.double().tolist()], dtype=torch.float64)
    assert torch.allclose(act(x).double(), ref, atol=1e-6)  # beyond the range: clipped to its ends


torchao_primitives = pytest.importorskip("torchao.quantization.quant_primitives")


@pytest.mark.parametrize("bits, g", [(4, 8), (8, 32), (2, 16), (6, 64)])
def test_dynamic_activation_parameters_and_codes_equal_torchaos(bits, g):
    p = torchao_primitives
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(bits)) * 3
    x[2, :g] = x[2, :g].abs() + 0.5  # a same-sign group: both widen its range to contain 0
    s_ao, z_ao = p.choose_qparams_affine(
        x,
        p.MappingType.ASYMMETRIC,
        (1, g),
        torch.uint8,
        0,
        2**bits - 1,
        eps=1e-8,
        scale_dtype=torch.float32,
        zero_point_dtype=torch.float32,
    )
    q_ao = p.quantize_affine(x, (1, g), s_ao, z_ao, torch.uint8, 0, 2**bits - 1)
    xg, s, z = dynamic_qparams(x, bits, g, symmetric=False)
    assert torch.allclose(s.reshape(s_ao.shape), s_ao, rtol=1e-6) and torch.equal(z.reshape(z_ao.shape), z_ao)
    assert torch.equal(quantize(xg, s, z, bits).reshape(x.shape), q_ao)


@pytest.mark.parametrize("bits, g", [(4, 16), (8, 8), (3, 32)])
def test_weight_codes_and_dequantization_equal_torchaos_for_the_same_parameters(bits, g):
    """Our stored scales are float16 rounded up, torchao's float32: so its quantize_affine and
    dequantize_affine are given our scale and zero point, block (1, g)."""
    p = torchao_primitives
    w = torch.randn(12, 64, generator=torch.Generator().manual_seed(g))
    codes, s, z = quantize_weight(w, bits, Granularity("group", g))
    block = (1, g)
    assert torch.equal(p.quantize_affine(w, block, s, z, torch.uint8, 0, 2**bits - 1), codes)
    ours = (codes.float().reshape(12, -1, g) - z[..., None]) * s[..., None]
    theirs = p.dequantize_affine(codes, block, s, z, torch.uint8, 0, 2**bits - 1, output_dtype=torch.float32)
    assert torch.allclose(ours.reshape(12, 64), theirs, rtol=0, atol=1e-7)
