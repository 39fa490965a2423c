import pytest
import torch

from pipeline.quant.activation import ActQuantizer, ActSpec, TimestepContext, dynamic_fake_quant


def test_dynamic_equals_a_hand_computation_per_token_and_group():
    # one token, 4 channels, groups of 2, 2 bits: group A = [-1, 2], group B = [0.5, 1.0]
    x = torch.tensor([[[-1.0, 2.0, 0.5, 1.0]]])
    out = dynamic_fake_quant(x, bits=2, group_size=2)
    # A: s = 3/3 = 1, z = 1 -> [-1, 2];  B: range widened to [0, 1], s = 1/3, z = 0
    #    0.5/(1/3) = 1.5 -> 2 (half to even) -> 2/3;  1.0 -> 3 -> 1.0
    expected = torch.tensor([[[-1.0, 2.0, 2 / 3, 1.0]]])
    assert torch.allclose(out, expected, atol=1e-6)


def test_dynamic_scales_follow_each_token():
    x = torch.randn(3, 5, 8)
    x[1] *= 100  # one sample 100x larger: its own scales, same relative error
    q = dynamic_fake_quant(x, 8, 4)
    rel = [((q[i] - x[i]).norm() / x[i].norm()).item() for i in range(3)]
    assert max(rel) < 0.02 and rel[1] < 3 * min(rel[0], rel[2])
    assert q.shape == x.shape and q.dtype == x.dtype


def test_sixteen_bits_or_none_is_identity():
    x = torch.randn(2, 3, 8)
    assert ActQuantizer(ActSpec(16, "dynamic"))(x) is x
    assert ActQuantizer(ActSpec(8, "none"))(x) is x


def test_static_and_per_timestep_ranges():
    ranges = (torch.tensor([-1.0, -10.0]), torch.tensor([1.0, 10.0]), torch.tensor([900.0, 100.0]))
    ctx = TimestepContext()
    q = ActQuantizer.from_ranges(ActSpec(8, "static_timestep"), ranges, ctx)
    x = torch.full((2, 3, 4), 5.0)
    ctx.timestep = torch.tensor([890, 120])  # nearest calibrated: 900 (range 1), 100 (range 10)
    out = q(x)
    assert torch.allclose(out[0], torch.ones(3, 4), atol=1e-2)  # clipped to the narrow range
    assert torch.allclose(out[1], x[1], atol=0.05)
    static = ActQuantizer.from_ranges(ActSpec(8, "static"), (torch.tensor([-2.0]), torch.tensor([2.0]), torch.zeros(1)))
    assert static(x).max() == pytest.approx(2.0, abs=0.02)


def test_static_needs_ranges_and_timestep():
    with pytest.raises(ValueError, match="needs calibrated ranges"):
        ActQuantizer(ActSpec(8, "static"))
    q = ActQuantizer.from_ranges(
        ActSpec(8, "static_timestep"), (torch.tensor([-1.0]), torch.tensor([1.0]), torch.tensor([10.0])), None
    )
    with pytest.raises(RuntimeError, match="needs the model's timestep"):
        q(torch.randn(1, 2, 2))
