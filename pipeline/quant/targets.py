"""Which linears Q-DiT quantizes by default: in every transformer block, the attention
projections (q, k, v, out) and both feed-forward linears. Embedders, adaLN modulation and the
final layer stay in floating point."""

from __future__ import annotations

from typing import Iterable

DEFAULT_SUFFIXES = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj", "ff.net.2")


def default_targets(names: Iterable[str]) -> list[str]:
    return [n for n in names if n.startswith("transformer_blocks.") and n.endswith(DEFAULT_SUFFIXES)]
