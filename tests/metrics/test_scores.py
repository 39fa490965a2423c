import math

import pytest
import torch

from pipeline.metrics.scores import inception_score, kid


def _gauss(n, d, shift=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64) + shift


def test_inception_score_bounds():
    # the same prediction for every image: p(y|x) = p(y), KL = 0, IS = 1
    assert inception_score(torch.zeros(100, 10)) == pytest.approx(1.0, abs=1e-12)
    # confident and spread evenly over the 10 classes: IS = number of classes
    logits = torch.full((1000, 10), -50.0)
    logits[torch.arange(1000), torch.arange(1000) % 10] = 50.0
    assert inception_score(logits) == pytest.approx(10.0, rel=1e-9)
    # confident but all one class: IS = 1
    one = torch.full((100, 10), -50.0)
    one[:, 3] = 50.0
    assert inception_score(one) == pytest.approx(1.0, abs=1e-9)


def test_inception_score_uses_splits_of_5000_and_is_deterministic():
    logits = _gauss(12000, 20, seed=1) * 3
    a, b = inception_score(logits), inception_score(logits)
    assert a == b
    # 3 splits of 4000 (ceil(12000 / 5000)): the mean over splits is below the whole-set score
    # of the same sharp distribution only by sampling noise
    whole = math.exp((logits.softmax(1) * (logits.log_softmax(1) - logits.softmax(1).mean(0).log())).sum(1).mean())
    assert a == pytest.approx(whole, rel=0.02)


def test_kid_same_distribution_near_zero_and_grows_with_the_shift():
    f = _gauss(600, 16, seed=2)
    # identical sets: the unbiased estimator's cross term keeps the shared diagonal, so KID
    # dips just below 0
    assert -0.05 < kid(f, f) <= 0.0
    same = kid(_gauss(600, 16, seed=3), f)
    small, large = kid(_gauss(600, 16, 0.2, seed=4), f), kid(_gauss(600, 16, 1.0, seed=4), f)
    assert abs(same) < 0.01 and 0.05 < small < large and large > 5


def test_kid_shrinks_subsets_to_small_sets_and_is_deterministic():
    fake, real = _gauss(50, 8, 0.5, seed=5), _gauss(80, 8, seed=6)
    assert kid(fake, real, subset_size=1000) == kid(fake, real, subset_size=1000)
    with pytest.raises(ValueError, match="KID needs at least 2 images per set"):
        kid(fake[:1], real)
