"""SVDQuant's low-rank branch: W = L1 L2 + R, with L1 L2 the best rank-r approximation of W
(from its SVD) kept in 16 bits and only the residual R quantized. The branch takes the layer's
unquantized input, so the outliers that smoothing moved into W are carried at full precision.
"""

from __future__ import annotations

import torch


@torch.no_grad()
def split(weight: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(down [r, in], up [out, r], residual [out, in]) with up @ down the rank-r truncated SVD
    of weight (singular values shared as square roots), in float32; the residual is what is left
    after the branch is rounded to 16 bits (float16), so quantization sees the exact remainder."""
    w = weight.detach().double()
    u, s, vh = torch.linalg.svd(w, full_matrices=False)
    root = s[:rank].sqrt()
    up = (u[:, :rank] * root).half().float()
    down = (root[:, None] * vh[:rank]).half().float()
    residual = (w - up.double() @ down.double()).float()
    return down, up, residual
