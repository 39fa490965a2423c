"""Optional: quantize the attention matmul inputs (Q, K, V and the softmax output).

A diffusers attention processor for DiT self-attention that computes softmax(Q K^T / sqrt(d)) V
with explicit matmuls, so Q, K, V (per token and head) and the attention probabilities (per
row) can be fake-quantized dynamically at `bits`, the probabilities either uniformly or (RepQ-ViT)
with a log2 quantizer: levels 2^-k, k = 0 .. 2^bits - 2, and 0 below them. With 16 bits it
equals diffusers' scaled-dot-product processor.
"""

from __future__ import annotations

import torch

from pipeline.quant.activation import dynamic_fake_quant
from pipeline.quant.quantizer import FP_BITS


def log2_fake_quant(p: torch.Tensor, bits: int) -> torch.Tensor:
    """Probabilities p in [0, 1] to the nearest 2^-k in the log domain, k < 2^bits - 1; the
    last code is 0 (what underflows the smallest level)."""
    k = torch.round(-torch.log2(p.float().clamp_min(1e-30)))
    q = torch.where(k < 2**bits - 1, torch.exp2(-k.clamp_min(0)), torch.zeros_like(k))
    return q.to(p.dtype)


class QuantAttnProcessor:
    def __init__(self, bits: int, softmax: str = "uniform"):
        self.bits = bits
        self.softmax = softmax

    def _q(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.bits == FP_BITS else dynamic_fake_quant(x, self.bits, None)

    def _q_probs(self, p: torch.Tensor) -> torch.Tensor:
        if self.bits == FP_BITS:
            return p
        return log2_fake_quant(p, self.bits) if self.softmax == "log2" else self._q(p)

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs
    ):
        if (
            encoder_hidden_states is not None
            or attention_mask is not None
            or attn.spatial_norm is not None
            or attn.group_norm is not None
            or attn.norm_q is not None
            or attn.residual_connection
        ):
            raise NotImplementedError("QuantAttnProcessor supports DiT self-attention only")
        b, n, _ = hidden_states.shape
        heads = attn.heads

        def split(x):
            return x.view(b, n, heads, -1).transpose(1, 2)  # [b, heads, n, d]

        q, k, v = split(attn.to_q(hidden_states)), split(attn.to_k(hidden_states)), split(attn.to_v(hidden_states))
        q, k, v = self._q(q), self._q(k), self._q(v)
        probs = torch.softmax((q @ k.transpose(-1, -2)).float() * (q.shape[-1] ** -0.5), dim=-1).to(q.dtype)
        out = self._q_probs(probs) @ v
        out = out.transpose(1, 2).reshape(b, n, -1)
        out = attn.to_out[1](attn.to_out[0](out))
        return out / attn.rescale_output_factor
