"""The low-bit backends' Triton kernels against their eager references. They run on a CUDA GPU,
or on the CPU in Triton's interpreter (TRITON_INTERPRET=1 with Triton installed)."""

import os

import pytest
import torch

from pipeline.quant import lowbit_kernels as lk
from pipeline.quant.packing import pack_int4

CUDA = torch.cuda.is_available()
RUNS = lk.triton is not None and (CUDA or os.environ.get("TRITON_INTERPRET") == "1")
DEVICE = "cuda" if CUDA else "cpu"
needs_triton = pytest.mark.skipif(not RUNS, reason="needs Triton on a CUDA GPU (or TRITON_INTERPRET=1)")


def test_block_k_never_straddles_a_group():
    assert lk.w4_block_k(1152, 128) == 64
    assert lk.w4_block_k(1152, 288) == 32
    assert lk.w4_block_k(4608, 16) == 64  # four whole groups per tile
    assert lk.w4_block_k(1152, 96) == 32
    assert lk.w4_block_k(1152, 1152) == 64
    assert lk.w4_block_k(24, 8) is None
    assert lk.w4_block_k(48, 16) is None  # K must take 32-wide tiles


@needs_triton
@pytest.mark.parametrize(
    "m, k, n, group, kind",
    [
        (40, 128, 48, 32, "group"),
        (7, 64, 16, 64, "channel"),
        (33, 96, 40, 96, "tensor"),
        (300, 288, 136, 96, "group"),
        (1, 32, 8, 16, "group"),
        (1100, 64, 24, 32, "group"),
        (1030, 96, 40, 96, "tensor"),
        (1500, 128, 16, 16, "group"),
    ],
)  # > 1024 rows: dequantize first
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_w4_linear_equals_dequantize_then_linear(m, k, n, group, kind, dtype):
    if dtype == torch.bfloat16 and not CUDA:
        pytest.skip("the interpreter computes bf16 dots in float32")
    g = torch.Generator().manual_seed(m + k + n)
    rows = 1 if kind == "tensor" else n
    x = torch.randn(m, k, generator=g).to(DEVICE, dtype)
    packed = pack_int4(torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)).to(DEVICE)
    scale = (torch.rand(rows, k // group, generator=g) * 0.1 + 0.01).to(DEVICE)
    zero = torch.randint(0, 16, (rows, k // group), generator=g).float().to(DEVICE)
    bias = torch.randn(n, generator=g).to(DEVICE, dtype)
    y = lk.w4_linear(x.reshape(1, m, k), packed, scale, zero, bias)
    ref = lk.w4_linear_reference(x, packed, scale, zero, bias)
    assert y.shape == (1, m, n) and y.dtype == dtype
    # the same weights (bit for bit), summed in another order: accumulation rounding only,
    # then one rounding to bf16
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert ((y[0].float() - ref.float()).norm() / ref.float().norm()).item() < tol


@needs_triton
def test_w4_linear_names_unsupported_groups():
    with pytest.raises(ValueError, match=r"K \(24\) and the group size \(8\) to be multiples of 16, and K of 32"):
        lk.w4_linear(
            torch.zeros(2, 24), torch.zeros(4, 12, dtype=torch.uint8), torch.ones(4, 3), torch.zeros(4, 3), None
        )


@pytest.mark.skipif(
    not (CUDA and lk.triton is not None),
    reason="FP8 conversion needs the GPU (the interpreter's E4M3 rounding differs)",
)
@pytest.mark.parametrize("k", [64, 1152, 4608])
def test_fp8_rows_is_the_reference_bit_for_bit(k):
    x = (torch.randn(257, k, device="cuda") * 3).to(torch.bfloat16)
    x[5] = 0  # an all-zero token keeps a positive scale
    q, s = lk.fp8_rows(x)
    q_ref, s_ref = lk.fp8_rows_reference(x)
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


def test_fp8_rows_reference_scales_each_row_to_448():
    x = torch.randn(6, 40) * torch.arange(1, 7)[:, None]
    q, s = lk.fp8_rows_reference(x)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (6, 1)
    assert torch.equal(q.float().abs().amax(1), torch.full((6,), 448.0))
    assert ((q.float() * s - x).abs() <= x.abs() / 16 + 1e-6).all()  # E4M3: half a step of 3 mantissa bits
