"""Frechet distance between feature sets, through torchmetrics' FID.

Features are computed once (see features.py) and passed to torchmetrics through an identity
extractor, so its well-tested mean/covariance accumulation and matrix square root are used.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from torchmetrics.image.fid import FrechetInceptionDistance


class Precomputed(nn.Module):
    """Identity 'extractor': the metric receives features already computed."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return feats


def _metric(dim: int) -> FrechetInceptionDistance:
    # features are complete on the calling process: never sync with other DDP ranks
    return FrechetInceptionDistance(feature=Precomputed(dim), sync_on_compute=False).double()


def set_real_statistics(metric: FrechetInceptionDistance, mu: np.ndarray, sigma: np.ndarray) -> None:
    """Load precomputed reference statistics (e.g. an ADM reference batch's mu, sigma).

    torchmetrics keeps sums; n = 2 recovers mu and sigma exactly with least cancellation.
    """
    mu_t = torch.as_tensor(mu, dtype=torch.float64)
    sigma_t = torch.as_tensor(sigma, dtype=torch.float64)
    n = 2
    metric.real_features_sum = mu_t * n
    metric.real_features_cov_sum = sigma_t * (n - 1) + n * torch.outer(mu_t, mu_t)
    metric.real_features_num_samples = torch.tensor(n)


def frechet_distance(fake: torch.Tensor, real: torch.Tensor | tuple[np.ndarray, np.ndarray]) -> float:
    """FID between fake features [N, D] and real features [M, D] or statistics (mu, sigma)."""
    metric = _metric(fake.shape[1])
    dim = real[0].shape[0] if isinstance(real, tuple) else real.shape[1]
    if dim != fake.shape[1]:
        raise ValueError(f"feature sizes differ: generated {fake.shape[1]}, reference {dim}")
    if isinstance(real, tuple):
        set_real_statistics(metric, *real)
    else:
        metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    return float(metric.compute())


def statistics(feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    f = feats.double().numpy()
    return f.mean(0), np.cov(f, rowvar=False)
