"""Feature extractors for the distribution metrics: digit classifier or Inception-v3.

Images go through the extractor once. `extract_all` returns the three views every metric of
the suite needs: pooled features (FID, KID, precision/recall), spatial features (sFID) and
class logits (IS); `extract` only the pooled ones (the search's FID fitness).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pipeline.errors import UserError
from pipeline.models.classifier import DigitFeatures, load_classifier
from pipeline.options import Features


@dataclass
class FeatureSet:
    """One image set in feature space, float64 on the CPU, one row per image."""

    pool: torch.Tensor
    spatial: torch.Tensor
    logits: torch.Tensor


class InceptionFeatures(nn.Module):
    """Inception-v3 as in the ADM evaluator: pool3 (2048-d) for FID, KID and precision/recall;
    the first 7 channels of mixed_6/conv (Mixed_6d's 1x1 branch, 17x17), flattened channels
    last, for sFID (2023-d); the 1008 logits without bias for IS."""

    spatial_channels = 7

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self._spatial: torch.Tensor | None = None
        net.Mixed_6d.branch1x1.register_forward_hook(self._keep_spatial)

    def _keep_spatial(self, module, inputs, output) -> None:
        self._spatial = output

    @staticmethod
    def _rgb(images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
            images = images.permute(0, 3, 1, 2)  # NHWC -> NCHW
        return images.repeat(1, 3, 1, 1) if images.shape[1] == 1 else images

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self._rgb(images))

    def all(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pool = self.net(self._rgb(images)).reshape(len(images), -1)
        # ADM's reference statistics flatten the map as [H, W, C]: keep that order so the
        # mu_s/sigma_s of its .npz files apply
        spatial = self._spatial[:, : self.spatial_channels].permute(0, 2, 3, 1).reshape(len(images), -1)
        logits = pool @ self.net.fc.weight.T  # torch-fidelity's "logits_unbiased", as used for IS
        return pool, spatial, logits


def resolve_kind(kind: str, model_info: dict) -> str:
    if kind == Features.AUTO:
        return Features.DIGITS.value if model_info.get("source") == "tiny" else Features.INCEPTION.value
    return kind


def build_extractor(kind: str, model_dir: Path, inception_weights: str | None = None) -> nn.Module:
    """`digits`: the classifier trained with the tiny DiT; `inception`: the FID Inception-v3 of
    torchmetrics/torch-fidelity, which needs the optional extra `.[imagenet]`."""
    if kind == Features.DIGITS:
        return DigitFeatures(load_classifier(model_dir))
    if kind == Features.INCEPTION:
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            # TF1-style resize (no antialias), as the graph behind ADM's reference statistics
            net = NoTrainInceptionV3(
                name="inception-v3-compat",
                features_list=["2048"],
                feature_extractor_weights_path=inception_weights,
                antialias=False,
            )
        except ModuleNotFoundError:
            raise UserError(
                "evaluate.features = 'inception' needs torch-fidelity, which is not "
                "installed: pip install -e '.[imagenet]' (kept out of the default "
                "install because it replaces torch with a CUDA build)"
            ) from None
        except Exception as e:
            raise UserError(
                f"cannot build the Inception feature extractor ({e}); offline, download "
                "pt_inception-2015-12-05 weights and set evaluate.inception_weights"
            ) from None
        return InceptionFeatures(net)
    raise UserError(f"evaluate.features = {kind!r}; allowed: auto, digits, inception")


def _batches(images_u8: np.ndarray, batch_size: int, device, desc: str, progress: bool):
    for start in tqdm(
        range(0, len(images_u8), batch_size),
        desc=desc,
        mininterval=2.0,
        disable=not progress or len(images_u8) <= batch_size,
    ):
        yield torch.from_numpy(images_u8[start : start + batch_size]).permute(0, 3, 1, 2).to(device)


@torch.no_grad()
def extract(
    extractor: nn.Module,
    images_u8: np.ndarray,
    batch_size: int,
    device: torch.device | None = None,
    desc: str = "features",
    progress: bool = True,
) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float64 pooled features [N, D]."""
    device = device or torch.device("cpu")
    extractor = extractor.to(device).eval()
    out = []
    for batch in _batches(images_u8, batch_size, device, desc, progress):
        feats = extractor(batch)
        feats = feats[0] if isinstance(feats, tuple) else feats
        out.append(feats.reshape(len(batch), -1).double().cpu())
    return torch.cat(out)


@torch.no_grad()
def extract_all(
    extractor: nn.Module,
    images_u8: np.ndarray,
    batch_size: int,
    device: torch.device | None = None,
    desc: str = "features",
    progress: bool = True,
) -> FeatureSet:
    """uint8 [N, H, W, C] -> pooled, spatial and logit features, in one pass over the images."""
    device = device or torch.device("cpu")
    extractor = extractor.to(device).eval()
    parts: list[list[torch.Tensor]] = [[], [], []]
    for batch in _batches(images_u8, batch_size, device, desc, progress):
        for part, t in zip(parts, extractor.all(batch)):
            part.append(t.reshape(len(batch), -1).double().cpu())
    return FeatureSet(*(torch.cat(p) for p in parts))
