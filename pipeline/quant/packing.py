"""Two 4-bit weight codes per byte: how quantized checkpoints store weights of 4 bits or fewer.

Byte j of a row holds code 2j in its low nibble and code 2j + 1 in its high nibble (an odd
last column leaves the high nibble 0), the layout of most int4 GEMM kernels. Weights of 5-8
bits stay one code per byte.
"""

from __future__ import annotations

import torch

PACKED_BITS = 4  # weights of at most this many bits are stored two per byte


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """uint8 codes in [0, 15], [rows, cols] -> uint8 [rows, ceil(cols / 2)]."""
    if codes.dtype != torch.uint8 or codes.dim() != 2:
        raise ValueError(f"expected 2-d uint8 codes, got {codes.dtype} of shape {tuple(codes.shape)}")
    if codes.numel() and int(codes.max()) > 15:
        raise ValueError(f"code {int(codes.max())} does not fit in 4 bits")
    if codes.shape[1] % 2:
        codes = torch.nn.functional.pad(codes, (0, 1))
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor, cols: int) -> torch.Tensor:
    """The inverse of pack_int4: uint8 [rows, ceil(cols / 2)] -> uint8 codes [rows, cols]."""
    if packed.dtype != torch.uint8 or packed.dim() != 2 or packed.shape[1] != (cols + 1) // 2:
        raise ValueError(
            f"packed codes of shape {tuple(packed.shape)} ({packed.dtype}) cannot hold {cols} columns of 4-bit codes"
        )
    out = torch.stack([packed & 0x0F, packed >> 4], dim=2).reshape(packed.shape[0], -1)
    return out[:, :cols].contiguous()
