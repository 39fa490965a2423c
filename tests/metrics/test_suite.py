import numpy as np
import pytest
import torch
import torch.nn as nn

from pipeline.errors import UserError
from pipeline.metrics.features import FeatureSet, InceptionFeatures, extract, extract_all
from pipeline.metrics.fid import statistics
from pipeline.metrics.suite import METRICS, RealFeatures, distribution_metrics
from pipeline.models.classifier import DigitClassifier, DigitFeatures
from pipeline.models.tiny import load_digits_images


@pytest.fixture(scope="module")
def digit_extractor():
    torch.manual_seed(0)
    return DigitFeatures(DigitClassifier().eval())


def test_one_pass_gives_the_three_views(digit_extractor):
    images = load_digits_images()[0][:40]
    feats = extract_all(digit_extractor, images, batch_size=16, progress=False)
    assert feats.pool.shape == (40, 128) and feats.spatial.shape == (40, 16 * 4 * 4)
    assert feats.logits.shape == (40, 10) and feats.pool.dtype == torch.float64
    # the pooled view is what `extract` (the search's FID fitness) returns
    assert torch.equal(feats.pool, extract(digit_extractor, images, batch_size=16, progress=False))


def test_identical_sets_score_perfectly(digit_extractor):
    images = load_digits_images()[0][:300]
    feats = extract_all(digit_extractor, images, 100, progress=False)
    real = RealFeatures(extract_all(digit_extractor, images, 100, progress=False), None, None)
    m = distribution_metrics(feats, real, kid_subset_size=300)
    assert set(m) == set(METRICS)
    assert abs(m["fid"]) < 1e-6 and abs(m["sfid"]) < 1e-6
    assert m["precision"] == m["recall"] == 1.0 and m["kid"] <= 0.0
    assert 1.0 <= m["is"] <= 10.0


def test_disjoint_sets_score_badly(digit_extractor):
    images = load_digits_images()[0][:300]
    real = RealFeatures(extract_all(digit_extractor, images, 100, progress=False), None, None)
    noise = np.random.default_rng(0).integers(0, 256, images.shape, dtype=np.uint8)
    m = distribution_metrics(extract_all(digit_extractor, noise, 100, progress=False), real, kid_subset_size=300)
    good = distribution_metrics(
        extract_all(digit_extractor, images[:150], 100, progress=False), real, kid_subset_size=150
    )
    assert m["precision"] == 0.0 and m["recall"] == 0.0
    assert m["fid"] > 10 * good["fid"] and m["sfid"] > 10 * good["sfid"] and m["kid"] > 10 * abs(good["kid"])
    # a subset of the reference: fully precise, partly recalled
    assert good["precision"] == 1.0 and good["recall"] < 1.0


def _feats(n, seed, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return FeatureSet(
        torch.randn(n, 6, generator=g, dtype=torch.float64) + shift,
        torch.randn(n, 4, generator=g, dtype=torch.float64) + shift,
        torch.randn(n, 10, generator=g, dtype=torch.float64),
    )


def test_statistics_only_reference_gives_fid_and_sfid_and_null_image_metrics():
    real, fake = _feats(500, 1), _feats(200, 2, 0.3)
    from_feats = distribution_metrics(fake, RealFeatures(real, None, None))
    stats_only = distribution_metrics(fake, RealFeatures(None, statistics(real.pool), statistics(real.spatial)))
    assert stats_only["fid"] == pytest.approx(from_feats["fid"], rel=1e-9)
    assert stats_only["sfid"] == pytest.approx(from_feats["sfid"], rel=1e-9)
    assert stats_only["is"] == from_feats["is"]
    assert stats_only["kid"] is stats_only["precision"] is stats_only["recall"] is None


def test_statistics_of_another_feature_network_are_refused():
    fake = _feats(50, 3)
    with pytest.raises(UserError, match=r"'mu/sigma' statistics are 2048-d but the features are 6-d"):
        distribution_metrics(fake, RealFeatures(None, (np.zeros(2048), np.eye(2048)), None))


class _FakeInception(nn.Module):
    """Stands in for torch-fidelity's network (not installable here): the same module names."""

    def __init__(self):
        super().__init__()
        self.Mixed_6d = nn.Module()
        self.Mixed_6d.branch1x1 = nn.Conv2d(3, 192, 1)
        self.head = nn.Linear(192, 2048)
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x):
        x = nn.functional.interpolate(x.float(), size=(17, 17))
        return self.head(self.Mixed_6d.branch1x1(x).mean((2, 3)))


def test_inception_wrapper_views_follow_the_adm_layout():
    torch.manual_seed(0)
    net = _FakeInception().eval()
    wrapper = InceptionFeatures(net)
    images = torch.randint(0, 256, (3, 1, 32, 32), dtype=torch.uint8)  # grey: repeated to RGB
    with torch.no_grad():
        pool, spatial, logits = wrapper.all(images)
        conv = net.Mixed_6d.branch1x1(nn.functional.interpolate(images.repeat(1, 3, 1, 1).float(), size=(17, 17)))
    assert pool.shape == (3, 2048) and spatial.shape == (3, 7 * 17 * 17) and logits.shape == (3, 1008)
    # channels last, first 7 channels: ADM's mu_s/sigma_s layout
    assert torch.equal(spatial[0, :7], conv[0, :7, 0, 0])
    assert torch.equal(spatial.reshape(3, 17, 17, 7), conv[:, :7].permute(0, 2, 3, 1))
    assert torch.allclose(logits, pool @ net.fc.weight.T)  # unbiased logits, as torch-fidelity's IS
