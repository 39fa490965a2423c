import numpy as np
import pytest
import torch

from pipeline.metrics.precision_recall import manifold_radii, precision_recall


def _gauss(n, d, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def _brute_force(fake, real, k):
    """Direct transcription of the definition, one pair at a time."""

    def radii(x):
        return [sorted(float(np.linalg.norm(a - b)) for b in x)[k] for a in x]

    def share(points, centres, r):
        return np.mean([any(np.linalg.norm(p - c) <= rc for c, rc in zip(centres, r)) for p in points])

    fake, real = fake.numpy(), real.numpy()
    return share(fake, real, radii(real)), share(real, fake, radii(fake))


def test_identical_sets_are_fully_precise_and_recalled():
    f = _gauss(300, 16)
    assert precision_recall(f, f, k=3) == (1.0, 1.0)


def test_disjoint_sets_score_zero():
    assert precision_recall(_gauss(200, 8, 100.0, seed=1), _gauss(300, 8, seed=2), k=3) == (0.0, 0.0)


def test_subset_is_precise_but_not_fully_recalled():
    real = _gauss(1000, 8, seed=3)
    p, r = precision_recall(real[:200], real, k=3)
    assert p == 1.0  # every generated point is a real point
    assert 0.2 <= r < 1.0  # its own 200 points are covered; not every real point is
    # a mode-dropping subset (one half-space of the real set) recalls about that half
    half = real[real[:, 0] < 0]
    p, r = precision_recall(half, real, k=3)
    assert p == 1.0 and 0.4 < r < 0.75


def test_matches_the_definition_point_by_point():
    fake, real = _gauss(60, 5, 0.7, seed=4), _gauss(80, 5, seed=5)
    for k in (1, 3, 5):
        p, r = precision_recall(fake, real, k=k)
        bp, br = _brute_force(fake, real, k)
        assert p == pytest.approx(bp, abs=1e-12) and r == pytest.approx(br, abs=1e-12)


def test_radius_is_the_kth_neighbour_excluding_the_point_itself():
    x = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert manifold_radii(x, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert manifold_radii(x, k=3).tolist() == [7.0, 6.0, 4.0, 7.0]
    with pytest.raises(ValueError, match="k = 4 nearest neighbours needs more than k points; the set has 4"):
        manifold_radii(x, k=4)


def test_chunked_rows_give_the_same_answer(monkeypatch):
    import pipeline.metrics.precision_recall as pr

    fake, real = _gauss(250, 6, 0.3, seed=6), _gauss(270, 6, seed=7)
    whole = precision_recall(fake, real)
    monkeypatch.setattr(pr, "_ROWS", 37)
    assert precision_recall(fake, real) == whole


def test_feature_sizes_must_match():
    with pytest.raises(ValueError, match="feature sizes differ: generated 4, real 5"):
        precision_recall(_gauss(10, 4), _gauss(10, 5))
