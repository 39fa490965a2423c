import numpy as np
import pytest
import torch

from pipeline.metrics.fid import frechet_distance, statistics


def _gauss(n, d, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_identical_sets_give_zero():
    f = _gauss(500, 8)
    assert abs(frechet_distance(f, f)) < 1e-8


def test_shifted_gaussians_give_the_squared_mean_distance():
    # FID(N(0, I), N(m, I)) = |m|^2; here |m|^2 = 8 * 0.5^2 = 2
    fid = frechet_distance(_gauss(20000, 8, 0.5, seed=1), _gauss(20000, 8, seed=2))
    assert fid == pytest.approx(2.0, abs=0.05)


def test_subset_is_close_and_disjoint_is_far():
    full = _gauss(4000, 8, seed=3)
    near = frechet_distance(full[:2000], full)
    far = frechet_distance(_gauss(2000, 8, 3.0, seed=4), full)
    assert near < 0.05 and far > 50


def test_precomputed_statistics_equal_features():
    real, fake = _gauss(800, 6, seed=5), _gauss(300, 6, 0.2, seed=6)
    mu, sigma = statistics(real)
    assert frechet_distance(fake, (mu, sigma)) == pytest.approx(frechet_distance(fake, real), rel=1e-9, abs=1e-9)
    assert isinstance(mu, np.ndarray) and sigma.shape == (6, 6)
