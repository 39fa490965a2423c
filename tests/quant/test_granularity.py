import pytest
import torch

from pipeline.quant.granularity import Granularity, dequantize_weight, quantize_weight, scale_shape
from pipeline.quant.quantizer import sqnr_db


def _w(out=24, inp=64, seed=0):
    w = torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))
    w[:, 5] *= 10  # an outlier input channel, as in real DiT weights
    return w


@pytest.mark.parametrize(
    "gran, shape",
    [
        (Granularity("tensor"), (1, 1)),
        (Granularity("channel"), (24, 1)),
        (Granularity("group", 16), (24, 4)),
        (Granularity("group", 64), (24, 1)),
    ],
)
@pytest.mark.parametrize("clip", [False, True])
def test_scale_shapes_and_codes(gran, shape, clip):
    w = _w()
    codes, s, z = quantize_weight(w, 4, gran, clip=clip)
    assert codes.shape == w.shape and codes.dtype == torch.uint8 and codes.max() <= 15
    assert s.shape == z.shape == shape == scale_shape(tuple(w.shape), gran)
    w_hat = dequantize_weight(codes, s, z)
    assert w_hat.shape == w.shape
    if gran.kind == "group":  # each group quantized on its own range
        g = gran.group_size
        for r, grp in [(0, 0), (3, shape[1] - 1)]:
            block, block_hat = w[r, grp * g : (grp + 1) * g], w_hat[r, grp * g : (grp + 1) * g]
            step = s[r, grp]
            lo, hi = (0 - z[r, grp]) * step, (15 - z[r, grp]) * step  # the group's representable range
            inside = (block >= lo - step / 2) & (block <= hi + step / 2)
            # within the range: half a step at most; beyond it (clipping): the nearest end
            assert ((block_hat - block).abs()[inside] <= step / 2 + 1e-6).all()
            assert torch.allclose(block_hat[~inside], block[~inside].clamp(lo, hi), atol=1e-6)
            if not clip:
                assert inside.all()  # min/max ranges clip nothing


def test_sqnr_shrinks_as_group_size_grows():
    w = _w(48, 128)
    sq = {}
    for name, gran in [
        ("g8", Granularity("group", 8)),
        ("g32", Granularity("group", 32)),
        ("channel", Granularity("channel")),
        ("tensor", Granularity("tensor")),
    ]:
        codes, s, z = quantize_weight(w, 4, gran)
        sq[name] = sqnr_db(w, dequantize_weight(codes, s, z))
    assert sq["g8"] > sq["g32"] > sq["channel"] > sq["tensor"]


def test_group_that_does_not_divide_names_layer_size_and_valid_sizes():
    with pytest.raises(ValueError) as err:
        Granularity("group", 48).check("transformer_blocks.0.attn1.to_q", 128)
    msg = str(err.value)
    assert "transformer_blocks.0.attn1.to_q" in msg and "48" in msg and "128" in msg
    assert "1, 2, 4, 8, 16, 32, 64, 128" in msg
