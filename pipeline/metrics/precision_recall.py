"""Improved precision and recall (Kynkaanniemi et al., 2019), as in the ADM evaluator.

Each set's manifold is the union of balls around its points, a ball's radius being the
distance to the point's k-th nearest neighbour in its own set (k = 3). Precision: the share
of generated points inside the real manifold; recall: the share of real points inside the
generated manifold. Neither library we use provides it, so it is written here.
"""

from __future__ import annotations

import torch

_ROWS = 1024  # rows of the distance matrix held at once: 1024 x N float64


def _distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a.double(), b.double())


def manifold_radii(feats: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Distance of each point to its k-th nearest neighbour in the same set (itself excluded)."""
    if not 1 <= k < len(feats):
        raise ValueError(f"k = {k} nearest neighbours needs more than k points; the set has {len(feats)}")
    radii = []
    for start in range(0, len(feats), _ROWS):
        d = _distances(feats[start : start + _ROWS], feats)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # the point itself is the 1st, at 0
    return torch.cat(radii)


def inside(points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Boolean per point: within the radius of at least one centre."""
    out = []
    for start in range(0, len(points), _ROWS):
        d = _distances(points[start : start + _ROWS], centres)
        out.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(out)


def precision_recall(
    fake: torch.Tensor, real: torch.Tensor, k: int = 3, real_radii: torch.Tensor | None = None
) -> tuple[float, float]:
    """(precision, recall) of generated features [N, D] against real features [M, D];
    `real_radii` (manifold_radii(real, k)) when the caller already has them."""
    if fake.shape[1] != real.shape[1]:
        raise ValueError(f"feature sizes differ: generated {fake.shape[1]}, real {real.shape[1]}")
    if real_radii is None:
        real_radii = manifold_radii(real, k)
    precision = inside(fake, real, real_radii).double().mean().item()
    recall = inside(real, fake, manifold_radii(fake, k)).double().mean().item()
    return precision, recall
