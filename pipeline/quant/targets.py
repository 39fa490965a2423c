"""Which linears are quantized, chosen by module-name patterns (fnmatch; '*' spans dots).

Q-DiT's default: in every transformer block, the attention projections (q, k, v, out) and
both feed-forward linears. Embedders, adaLN modulation and the final layer stay in floating
point.
"""

from __future__ import annotations

from collections.abc import Iterable
from fnmatch import fnmatchcase

from pipeline.quant.errors import PlanError

DEFAULT_INCLUDE = (
    "transformer_blocks.*.attn1.to_q",
    "transformer_blocks.*.attn1.to_k",
    "transformer_blocks.*.attn1.to_v",
    "transformer_blocks.*.attn1.to_out.0",
    "transformer_blocks.*.ff.net.0.proj",
    "transformer_blocks.*.ff.net.2",
)


def select(names: Iterable[str], include: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Names matching any include pattern and no exclude pattern, in the given order.
    Raises PlanError for an include pattern that matches nothing (usually a typo)."""
    names = list(names)
    include, exclude = list(include), list(exclude)
    for pattern in include:
        if not any(fnmatchcase(n, pattern) for n in names):
            raise PlanError(
                f"include pattern {pattern!r} matches no Linear of the model (e.g. {', '.join(names[:3])}, ...)"
            )
    return [n for n in names if any(fnmatchcase(n, p) for p in include) and not any(fnmatchcase(n, p) for p in exclude)]


def default_targets(names: Iterable[str]) -> list[str]:
    names = list(names)
    return [n for n in names if any(fnmatchcase(n, p) for p in DEFAULT_INCLUDE)]
