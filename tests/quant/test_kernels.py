"""The Triton kernels against the reference path; runs where CUDA and Triton exist (the CPU
CI skips it; bench/quant_kernel_check.py runs the same check at DiT-XL/2 sizes)."""

import pytest
import torch

from pipeline.quant import kernels
from pipeline.quant.activation import _dynamic_reference
from pipeline.quant.granularity import Granularity, dequantize_weight, quantize_weight

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and kernels.triton is not None), reason="needs CUDA and Triton"
)


@pytest.mark.parametrize("c, g", [(128, 32), (1152, 128), (1152, 96), (4608, 4608)])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_activation_kernel_is_bit_identical(c, g, bits, symmetric, dtype):
    x = (torch.randn(333, c, device="cuda") * 3).to(dtype)
    x[:, 1] *= 40
    assert torch.equal(kernels.dynamic_fake_quant(x, bits, g, symmetric), _dynamic_reference(x, bits, g, symmetric))


@pytest.mark.parametrize("gran", [Granularity("group", 64), Granularity("channel"), Granularity("tensor")])
def test_weight_kernel_is_bit_identical(gran):
    w = torch.randn(96, 256, device="cuda")
    codes, s, z = quantize_weight(w, 4, gran)
    for dtype in (torch.float32, torch.bfloat16):
        assert torch.equal(kernels.dequantize_weight(codes, s, z, dtype), dequantize_weight(codes, s, z).to(dtype))
