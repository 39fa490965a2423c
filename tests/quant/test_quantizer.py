import pytest
import torch

from pipeline.quant.quantizer import (
    SUPPORTED_BITS,
    check_bits,
    clip_search,
    dequantize,
    fake_quant,
    qparams,
    quantize,
    sqnr_db,
)


def _x(seed=0, shape=(64, 96)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 3 + 0.5


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_codes_in_range_and_error_within_half_a_step(bits, symmetric):
    x = _x()
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    s, z = qparams(lo, hi, bits, symmetric)
    q = quantize(x, s, z, bits)
    assert q.dtype == torch.uint8 and q.min() >= 0 and q.max() <= 2**bits - 1
    assert torch.equal(z, z.round()) and z.min() >= 0 and z.max() <= 2**bits - 1
    err = (dequantize(q, s, z) - x).abs()
    assert (err <= s / 2 * (1 + 1e-5)).all()  # every x lies inside the representable range
    assert torch.allclose(fake_quant(x, s, z, bits), dequantize(q, s, z))
    # zero is exactly representable
    assert torch.equal(fake_quant(torch.zeros_like(x), s, z, bits), torch.zeros_like(x))


def test_asymmetric_formula_by_hand():
    x = torch.tensor([[-1.0, 0.0, 0.5, 2.0]])
    s, z = qparams(x.amin(1, keepdim=True), x.amax(1, keepdim=True), bits=2)
    assert s.item() == pytest.approx(1.0)  # (2 - (-1)) / (2^2 - 1)
    assert z.item() == 1.0  # round(1 / 1)
    assert quantize(x, s, z, 2).tolist() == [[0, 1, 1, 3]]  # 0.5 rounds half to even: 0, + z
    assert fake_quant(x, s, z, 2).tolist() == [[-1.0, 0.0, 0.0, 2.0]]


def test_scales_are_float16_values_rounded_up():
    s, _ = qparams(torch.tensor([-0.123456]), torch.tensor([0.987654]), 8)
    assert s.item() == s.half().float().item()
    assert s.item() * 255 >= 0.987654 + 0.123456
    s32, _ = qparams(torch.tensor([-0.123456]), torch.tensor([0.987654]), 8, fp16_scale=False)
    assert s32.item() == pytest.approx((0.987654 + 0.123456) / 255, rel=1e-6)


def test_sqnr_grows_with_bits():
    x = _x(1)
    values = []
    for bits in SUPPORTED_BITS:
        s, z = qparams(x.amin(1, keepdim=True), x.amax(1, keepdim=True), bits)
        values.append(sqnr_db(x, fake_quant(x, s, z, bits)))
    assert all(b > a + 4 for a, b in zip(values, values[1:]))  # about 6 dB per bit


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_clip_search_never_worse_in_its_norm(bits):
    x = _x(2)
    x[:, 0] *= 8  # outliers make clipping worthwhile
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    s0, z0 = qparams(lo, hi, bits)
    s1, z1 = clip_search(x, bits)
    e0 = (fake_quant(x, s0, z0, bits) - x).abs().pow(2.4).sum(1)
    e1 = (fake_quant(x, s1, z1, bits) - x).abs().pow(2.4).sum(1)
    assert (e1 <= e0 + 1e-6).all()
    assert (s1 <= s0 + 1e-9).all()


@pytest.mark.parametrize("bits", [1, 9, 12, 32])
def test_unsupported_bits(bits):
    with pytest.raises(ValueError, match="2 to 8, or 16"):
        check_bits(bits, "layer")
