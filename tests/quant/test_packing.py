import pytest
import torch

from pipeline.quant.packing import pack_int4, unpack_int4


@pytest.mark.parametrize("cols", [1, 2, 7, 128, 1153])
def test_pack_round_trips_and_halves_the_bytes(cols):
    codes = torch.randint(0, 16, (5, cols), dtype=torch.uint8, generator=torch.Generator().manual_seed(cols))
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, (cols + 1) // 2)
    assert torch.equal(unpack_int4(packed, cols), codes)


def test_layout_is_low_nibble_first():
    packed = pack_int4(torch.tensor([[1, 2, 3]], dtype=torch.uint8))
    assert packed.tolist() == [[1 | 2 << 4, 3]]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="does not fit in 4 bits"):
        pack_int4(torch.tensor([[16]], dtype=torch.uint8))
    with pytest.raises(ValueError, match="cannot hold 9 columns"):
        unpack_int4(torch.zeros(2, 4, dtype=torch.uint8), 9)
