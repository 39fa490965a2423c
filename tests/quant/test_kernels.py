"""The Triton kernels against the reference path, bit for bit: on a CUDA GPU, or on the CPU in
Triton's interpreter (TRITON_INTERPRET=1 with Triton installed, as CI runs it);
bench/quant_kernel_check.py runs the same check at DiT-XL/2 sizes on a GPU."""

import os

import pytest
import torch

from pipeline.quant import kernels
from pipeline.quant.activation import _dynamic_reference
from pipeline.quant.granularity import Granularity, dequantize_weight, quantize_weight

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
pytestmark = pytest.mark.skipif(
    not (kernels.triton is not None and (CUDA or os.environ.get("TRITON_INTERPRET") == "1")),
    reason="needs Triton on a CUDA GPU (or TRITON_INTERPRET=1)",
)


# the interpreter casts float32 to bf16 by truncation, CUDA rounds to nearest even
BF16 = pytest.param(torch.bfloat16, marks=pytest.mark.skipif(not CUDA, reason="interpreter: bf16 casts truncate"))


@pytest.mark.parametrize("c, g", [(128, 32), (1152, 128), (1152, 96), (4608, 4608)])
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_activation_kernel_is_bit_identical(c, g, bits, symmetric, dtype):
    x = (torch.randn(333, c, device=DEVICE) * 3).to(dtype)
    x[:, 1] *= 40
    assert torch.equal(kernels.dynamic_fake_quant(x, bits, g, symmetric), _dynamic_reference(x, bits, g, symmetric))


@pytest.mark.parametrize("gran", [Granularity("group", 64), Granularity("channel"), Granularity("tensor")])
@pytest.mark.parametrize("dtype", [torch.float32, BF16])
def test_weight_kernel_is_bit_identical(gran, dtype):
    w = torch.randn(96, 256, device=DEVICE)
    codes, s, z = quantize_weight(w, 4, gran)
    assert torch.equal(kernels.dequantize_weight(codes, s, z, dtype), dequantize_weight(codes, s, z).to(dtype))


def test_rounding_is_half_to_even_at_exact_ties():
    # a group whose range gives scale 1 and zero 0: every x / s is the value itself
    x = torch.tensor([[0.0, 15.0, 0.5, 1.5, 2.5, 3.5, 4.5, 7.5, 8.5, 13.5]], device=DEVICE)
    expected = torch.tensor([[0.0, 15.0, 0.0, 2.0, 2.0, 4.0, 4.0, 8.0, 8.0, 14.0]], device=DEVICE)
    assert torch.equal(kernels.dynamic_fake_quant(x, 4, 10, False), expected)
    assert torch.equal(_dynamic_reference(x, 4, 10, False), expected)
