"""Feature extractors for the distribution metrics: digit classifier or Inception-v3.

Images go through the extractor once; every metric (FID against the reference, FID against
the FP samples, and later sFID, IS, precision/recall) reuses those features.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pipeline.errors import UserError
from pipeline.models.classifier import DigitFeatures, load_classifier


def resolve_kind(kind: str, model_info: dict) -> str:
    if kind == "auto":
        return "digits" if model_info.get("source") == "tiny" else "inception"
    return kind


def build_extractor(kind: str, model_dir: Path, inception_weights: str | None = None) -> nn.Module:
    """`digits`: the classifier trained with the tiny DiT; `inception`: torchmetrics' FID
    Inception-v3 (pool3, 2048-d), which needs the optional extra `.[imagenet]`."""
    if kind == "digits":
        return DigitFeatures(load_classifier(model_dir))
    if kind == "inception":
        try:
            from torchmetrics.image.fid import NoTrainInceptionV3

            return NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=inception_weights)
        except ModuleNotFoundError:
            raise UserError("evaluate.features = 'inception' needs torch-fidelity, which is not "
                            "installed: pip install -e '.[imagenet]' (kept out of the default "
                            "install because it replaces torch with a CUDA build)") from None
        except Exception as e:
            raise UserError(f"cannot build the Inception feature extractor ({e}); offline, download "
                            "pt_inception-2015-12-05 weights and set evaluate.inception_weights") from None
    raise UserError(f"evaluate.features = {kind!r}; allowed: auto, digits, inception")


@torch.no_grad()
def extract(extractor: nn.Module, images_u8: np.ndarray, batch_size: int,
            device: torch.device | None = None, desc: str = "features", progress: bool = True) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float64 features [N, D]."""
    device = device or torch.device("cpu")
    extractor = extractor.to(device).eval()
    out = []
    for start in tqdm(range(0, len(images_u8), batch_size), desc=desc, mininterval=2.0,
                      disable=not progress or len(images_u8) <= batch_size):
        batch = torch.from_numpy(images_u8[start:start + batch_size]).permute(0, 3, 1, 2).to(device)
        feats = extractor(batch)
        feats = feats[0] if isinstance(feats, tuple) else feats
        out.append(feats.reshape(len(batch), -1).double().cpu())
    return torch.cat(out)
