"""Triton kernels of the real low-bit backends (backends.py), with the eager references they
are tested against.

w4_linear    y = x W^T + b with W stored as packed 4-bit codes (packing.py) and group-wise
             scales and zero points. Up to DEQUANT_FIRST_ROWS rows (memory-bound: small
             batches, adaLN), each K tile of codes is unpacked and dequantized in registers,
             with the reference's float32 formula (c - z) * s rounded to x's dtype, and fed to
             the tensor cores: the weight never exists in 16 bits in memory. Above, the layer's
             weight is dequantized by one kernel into a temporary and multiplied by cuBLAS.
fp8_rows     per-token (per-row) FP8 E4M3 quantization: scale = amax / 448, one read of x.

Both run in Triton's interpreter too (TRITON_INTERPRET=1, tensors on the CPU), which is how
their logic is tested on machines without a GPU.
"""

from __future__ import annotations

import torch

try:  # Triton ships with CUDA builds of torch; CPU machines have no use for it
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

FP8_MAX = 448.0  # largest finite float8_e4m3fn
_TINY = 1e-12


def w4_block_k(k: int, group: int) -> int | None:
    """The K tile of w4_linear: 64 or 32, dividing K, and either inside one group or holding
    whole groups; None if there is none. (16-wide bf16 tiles gave wrong sums on an H200 with
    Triton 3.6, so the tile never shrinks to the group.)"""
    if group % 16:
        return None
    return next((b for b in (64, 32) if k % b == 0 and (group % b == 0 or b % group == 0)), None)


def w4_linear_reference(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """What w4_linear computes, in eager torch: the fake path's dequantize + F.linear."""
    from pipeline.quant.granularity import dequantize_weight
    from pipeline.quant.packing import unpack_int4

    w = dequantize_weight(unpack_int4(packed, x.shape[-1]), scale, zero).to(x.dtype)
    return torch.nn.functional.linear(x, w, None if bias is None else bias.to(x.dtype))


def fp8_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (codes [M, K] float8_e4m3fn, scales [M, 1] float32) with x ~ codes * scale."""
    xf = x.float()
    # divide by a tensor: CUDA turns division by a Python number into a multiplication
    s = (xf.abs().amax(-1, keepdim=True) / torch.full((1, 1), FP8_MAX, device=x.device)).clamp(min=_TINY)
    return (xf / s).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), s


if triton is not None:

    @triton.jit
    def _w4_kernel(
        x_ptr,
        p_ptr,
        s_ptr,
        z_ptr,
        b_ptr,
        y_ptr,
        M,
        N,
        K,
        S_ROW,
        GSIZE,
        HAS_BIAS: tl.constexpr,
        IEEE: tl.constexpr,
        PER_ROW: tl.constexpr,
        BM: tl.constexpr,
        BN: tl.constexpr,
        BK: tl.constexpr,
        GROUP_M: tl.constexpr,
    ):
        # tiles ordered in groups of GROUP_M rows so neighbouring programs share weight tiles in L2
        pid = tl.program_id(0)
        num_m, num_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
        width = GROUP_M * num_n
        first_m = (pid // width) * GROUP_M
        rows_here = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % width) % rows_here
        pid_n = (pid % width) // rows_here
        rm = pid_m * BM + tl.arange(0, BM)
        rn = pid_n * BN + tl.arange(0, BN)
        m_ok, n_ok = rm < M, rn < N
        x_ptrs = x_ptr + rm[:, None].to(tl.int64) * K + tl.arange(0, BK)[None, :]
        p_ptrs = p_ptr + rn[:, None].to(tl.int64) * (K // 2) + tl.arange(0, BK // 2)[None, :]
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):
            x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0)
            p = tl.load(p_ptrs, mask=n_ok[:, None], other=0)
            # byte j holds code 2j (low nibble) and 2j + 1 (high): join + reshape interleaves them
            c = tl.join(p & 0xF, p >> 4).reshape(BN, BK).to(tl.float32)
            if PER_ROW:  # the tile lies in one group: one scale per output row
                s = tl.load(s_ptr + rn * S_ROW + k0 // GSIZE, mask=n_ok, other=1.0)[:, None]
                z = tl.load(z_ptr + rn * S_ROW + k0 // GSIZE, mask=n_ok, other=0.0)[:, None]
            else:  # the tile holds several groups: a scale per column
                cols = (k0 + tl.arange(0, BK)) // GSIZE
                s = tl.load(s_ptr + rn[:, None] * S_ROW + cols[None, :], mask=n_ok[:, None], other=1.0)
                z = tl.load(z_ptr + rn[:, None] * S_ROW + cols[None, :], mask=n_ok[:, None], other=0.0)
            w = ((c - z) * s).to(x.dtype)
            if IEEE:
                acc = tl.dot(x, tl.trans(w), acc, input_precision="ieee")
            else:
                acc = tl.dot(x, tl.trans(w), acc)
            x_ptrs += BK
            p_ptrs += BK // 2
        if HAS_BIAS:
            acc += tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        y_ptrs = y_ptr + rm[:, None].to(tl.int64) * N + rn[None, :]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    @triton.jit
    def _w4_dequant_kernel(p_ptr, s_ptr, z_ptr, w_ptr, N, K, S_ROW, GSIZE, BN: tl.constexpr, BK: tl.constexpr):
        rn = tl.program_id(0) * BN + tl.arange(0, BN)
        rk = tl.program_id(1) * BK + tl.arange(0, BK)
        n_ok = rn < N
        p = tl.load(
            p_ptr
            + rn[:, None].to(tl.int64) * (K // 2)
            + (tl.program_id(1) * (BK // 2) + tl.arange(0, BK // 2))[None, :],
            mask=n_ok[:, None],
            other=0,
        )
        c = tl.join(p & 0xF, p >> 4).reshape(BN, BK).to(tl.float32)
        g = rk // GSIZE
        s = tl.load(s_ptr + rn[:, None] * S_ROW + g[None, :], mask=n_ok[:, None], other=1.0)
        z = tl.load(z_ptr + rn[:, None] * S_ROW + g[None, :], mask=n_ok[:, None], other=0.0)
        tl.store(
            w_ptr + rn[:, None].to(tl.int64) * K + rk[None, :],
            ((c - z) * s).to(w_ptr.dtype.element_ty),
            mask=n_ok[:, None],
        )

    @triton.jit
    def _fp8_rows_kernel(
        x_ptr, q_ptr, s_ptr, M, K, ROWS: tl.constexpr, BLOCK: tl.constexpr, FMAX: tl.constexpr, TINY: tl.constexpr
    ):
        rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
        cols = tl.arange(0, BLOCK)
        mask = (rows[:, None] < M) & (cols[None, :] < K)
        offs = rows[:, None].to(tl.int64) * K + cols[None, :]
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        s = tl.maximum(tl.math.div_rn(tl.max(tl.abs(x), axis=1), FMAX), TINY)
        q = tl.minimum(tl.maximum(tl.math.div_rn(x, s[:, None]), -FMAX), FMAX)
        tl.store(q_ptr + offs, q.to(q_ptr.dtype.element_ty), mask=mask)
        tl.store(s_ptr + rows, s, mask=rows < M)


# Above this many rows the GEMM is compute-bound: dequantizing the packed weight once (a few
# microseconds) and calling cuBLAS beats dequantizing each tile once per row block.
DEQUANT_FIRST_ROWS = 1024


def w4_linear(
    x: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [..., K] -> [..., N]; packed [N, K / 2] uint8; scale, zero [N, G] or [1, 1] float32."""
    k = x.shape[-1]
    n = packed.shape[0]
    x2 = x.reshape(-1, k).contiguous()
    m = x2.shape[0]
    gsize = k // scale.shape[1]  # per tensor ([1, 1]), channel ([N, 1]) or group ([N, K / g])
    s_row = 0 if scale.shape[0] == 1 else scale.shape[1]  # one row of scales for every output
    bk = w4_block_k(k, gsize)
    if bk is None:
        raise ValueError(f"w4_linear needs K ({k}) and the group size ({gsize}) to be multiples of 16, and K of 32")
    if m > DEQUANT_FIRST_ROWS:
        w = torch.empty(n, k, dtype=x.dtype, device=x.device)
        _w4_dequant_kernel[(triton.cdiv(n, 64), k // bk)](
            packed, scale.contiguous(), zero.contiguous(), w, n, k, s_row, gsize, BN=64, BK=bk
        )
        return torch.nn.functional.linear(x, w, bias)
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    bm = 128 if m > 64 else 64 if m > 32 else 32 if m > 16 else 16
    bn = 128 if n >= 128 else 64 if n >= 64 else 32 if n >= 32 else 16
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    _w4_kernel[grid](
        x2,
        packed,
        scale.contiguous(),
        zero.contiguous(),
        bias if bias is not None else x2,
        y,
        m,
        n,
        k,
        s_row,
        gsize,
        HAS_BIAS=bias is not None,
        IEEE=x.dtype == torch.float32,
        PER_ROW=bk <= gsize,
        BM=bm,
        BN=bn,
        BK=bk,
        GROUP_M=8,
        num_warps=8 if bm * bn >= 128 * 128 else 4,
        num_stages=3,
    )
    return y.reshape(*x.shape[:-1], n)


def fp8_rows(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Triton version of fp8_rows_reference (x [M, K], contiguous)."""
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.float8_e4m3fn, device=x.device)
    s = torch.empty(m, 1, dtype=torch.float32, device=x.device)
    block = triton.next_power_of_2(k)
    rows = max(1, 8192 // block)  # several tokens per program: one per program was launch-bound
    _fp8_rows_kernel[(triton.cdiv(m, rows),)](
        x, q, s, m, k, ROWS=rows, BLOCK=block, FMAX=FP8_MAX, TINY=_TINY, num_warps=8
    )
    return q, s
