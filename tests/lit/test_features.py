"""Feature extraction as a Lightning predict run: the sets laid end to end, split back."""

import torch

from pipeline.config import TrainerConfig
from pipeline.lit.features import extract_sets
from pipeline.metrics.features import extract_all
from pipeline.models.classifier import DigitClassifier, DigitFeatures
from pipeline.models.tiny import load_digits_images


def test_sets_come_back_whole_and_in_order(tmp_path):
    torch.manual_seed(0)
    extractor = DigitFeatures(DigitClassifier().eval())
    images = load_digits_images()[0]
    sets = [images[:23], images[100:105], images[300:340]]  # batches of 16 straddle the sets
    trainer = TrainerConfig(accelerator="cpu", devices=1, strategy="auto", precision="bf16-true")
    feats = extract_sets(extractor, sets, 16, trainer, tmp_path / ".parts")
    assert [len(f.pool) for f in feats] == [23, 5, 40]
    for f, images_of_set in zip(feats, sets):
        alone = extract_all(extractor, images_of_set, 64, progress=False)
        # float32 whatever the trainer's precision (bf16 here would move these by 1e-2)
        assert f.pool.dtype == torch.float64
        for a, b in ((f.pool, alone.pool), (f.spatial, alone.spatial), (f.logits, alone.logits)):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-5)
    assert not (tmp_path / ".parts").exists()  # part files are cleaned up
