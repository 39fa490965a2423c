"""The Inception path with torch-fidelity's real network (random weights: none can be
downloaded here). Skipped without the optional extra `.[imagenet]`."""

import pytest
import torch

torch_fidelity = pytest.importorskip("torch_fidelity")

from pipeline.metrics.features import build_extractor, extract_all  # noqa: E402


@pytest.fixture
def random_weights(tmp_path, monkeypatch):
    """A weights file of the FID Inception's layout with random values: the network is built
    once with its weight loading disabled, and its state saved."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    with monkeypatch.context() as m:
        m.setattr(fe, "load_state_dict_from_url", lambda *a, **k: None)
        m.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None)
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    path = tmp_path / "weights.pth"
    torch.save(net.state_dict(), path)
    return str(path)


def test_inception_views_have_the_adm_sizes(random_weights, tmp_path):
    extractor = build_extractor("inception", tmp_path, random_weights)
    images = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8).numpy()
    feats = extract_all(extractor, images, batch_size=2, progress=False)
    assert feats.pool.shape == (3, 2048) and feats.spatial.shape == (3, 2023) and feats.logits.shape == (3, 1008)
    assert torch.isfinite(feats.pool).all() and torch.isfinite(feats.spatial).all()
    # grey images are repeated to RGB
    grey = extract_all(extractor, images[..., :1], batch_size=3, progress=False)
    rgb = extract_all(extractor, images[..., :1].repeat(3, axis=-1), batch_size=3, progress=False)
    assert torch.equal(grey.pool, rgb.pool)
