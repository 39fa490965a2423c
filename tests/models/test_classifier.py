import torch

from pipeline.models import tiny
from pipeline.models.classifier import DigitFeatures, load_classifier, save_classifier, train_classifier


def test_classifier_accuracy_features_and_round_trip(tmp_path):
    images, labels = tiny.load_digits_images()
    model, acc = train_classifier(
        images, labels, epochs=4, batch_size=64, learning_rate=2e-3, holdout=0.2, seed=0, progress=False
    )
    assert acc > 0.9
    feats = DigitFeatures(model)(torch.from_numpy(images[:5]).permute(0, 3, 1, 2))
    assert feats.shape == (5, 128) and (feats >= 0).all()
    save_classifier(model, tmp_path / "classifier", acc)
    back = load_classifier(tmp_path)
    x = torch.from_numpy(images[:7])
    assert torch.equal(back(x), model(x))
