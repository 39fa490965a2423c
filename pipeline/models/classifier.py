"""Small digit classifier whose penultimate features stand in for Inception on the digits.

FID on MNIST-like data is customarily computed on a classifier trained on that data; this one
is trained by the `model` stage next to the tiny DiT and saved with it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from pipeline.errors import UserError


class DigitClassifier(nn.Module):
    """uint8 [N, 8, 8, 1] or [N, 1, 8, 8] images -> logits; `features` gives the 128-d embedding."""

    num_features = 128  # read by torchmetrics for the FID state size

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc = nn.Linear(64 * 4 * 4, self.num_features)
        self.head = nn.Linear(self.num_features, num_classes)

    @staticmethod
    def prepare(images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] == 1 and images.shape[1] != 1:
            images = images.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return images.float() / 127.5 - 1.0

    def spatial(self, images: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(self.prepare(images)))
        return F.max_pool2d(F.relu(self.conv2(x)), 2)  # [N, 64, 4, 4]

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(self.spatial(images).flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


class DigitFeatures(nn.Module):
    """The feature extractor of the digit metrics: images in, 128-d features out (`forward`),
    or the three views the evaluation suite uses (`all`)."""

    num_features = DigitClassifier.num_features
    # sFID: like the ADM evaluator, which keeps the first 7 channels of Inception's 17x17
    # mixed_6/conv map, keep the first 16 of the 64 channels of the 4x4 map (256-d, so
    # its covariance is estimable from a 1000-image set)
    spatial_channels = 16

    def __init__(self, classifier: DigitClassifier):
        super().__init__()
        self.classifier = classifier.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)

    def all(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(pooled features [N, 128], spatial features [N, 256], class logits [N, 10])."""
        c = self.classifier
        spatial = c.spatial(images)
        pool = F.relu(c.fc(spatial.flatten(1)))
        return pool, spatial[:, : self.spatial_channels].flatten(1), c.head(pool)


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random shifts of up to one pixel: the generated digits are not perfectly centred."""
    dx, dy = torch.randint(-1, 2, (2,), generator=gen).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train_classifier(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    holdout: float,
    seed: int,
    progress: bool = True,
) -> tuple[DigitClassifier, float]:
    """Train on a seeded split; returns the model (eval mode) and its held-out accuracy."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    perm = torch.randperm(len(images), generator=gen)
    n_test = int(round(len(images) * holdout))
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    y = torch.from_numpy(labels)
    model = DigitClassifier()
    opt = torch.optim.Adam(model.parameters(), lr=learning_rate)
    for _ in tqdm(range(epochs), desc="train digit classifier", disable=not progress, mininterval=2.0):
        model.train()
        order = train_idx[torch.randperm(len(train_idx), generator=gen)]
        for start in range(0, len(order), batch_size):
            b = order[start : start + batch_size]
            xb = _shift(x[b].float(), gen)
            loss = F.cross_entropy(model(xb), y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x[test_idx]).argmax(1) == y[test_idx]).float().mean().item()
    return model, acc


def save_classifier(model: DigitClassifier, out_dir: Path, accuracy: float) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), str(out_dir / "model.safetensors"))
    (out_dir / "config.json").write_text(
        json.dumps(
            {"arch": "DigitClassifier", "num_features": model.num_features, "heldout_accuracy": accuracy}, indent=2
        )
    )


def load_classifier(model_dir: Path) -> DigitClassifier:
    path = Path(model_dir) / "classifier" / "model.safetensors"
    if not path.is_file():
        raise UserError(
            f"{path}: digit classifier not found; the digit-feature metrics need a model "
            "built with model.source: tiny (use evaluate.features: inception otherwise)"
        )
    model = DigitClassifier()
    try:
        model.load_state_dict(load_file(str(path)))
    except Exception as e:
        raise UserError(f"{path}: digit classifier weights are corrupt ({e}); rerun the `model` stage") from None
    return model.eval()
