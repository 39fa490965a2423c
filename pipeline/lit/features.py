"""LightningModule that turns image sets into metric features, on one CPU or many devices.

All sets go through one predict run (one DDP launch): item i is image i of the sets laid end
to end. Ranks return features by index and the runner merges them, so every device count
gives the features of one device, in the same order.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from pipeline.lit.runner import IndexDataset, run_predict
from pipeline.metrics.features import FeatureSet


class FeatureModule(L.LightningModule):
    def __init__(self, extractor: torch.nn.Module, sets: list[np.ndarray]):
        super().__init__()
        self.extractor = extractor.eval()
        self.sets = sets
        self.starts = np.cumsum([0] + [len(s) for s in sets])

    def _images(self, index: np.ndarray) -> torch.Tensor:
        which = np.searchsorted(self.starts, index, side="right") - 1
        batch = np.stack([self.sets[w][i - self.starts[w]] for w, i in zip(which, index)])
        return torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)

    @torch.no_grad()
    def predict_step(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        index = index.cpu()
        pool, spatial, logits = self.extractor.all(self._images(index.numpy()))
        # float32 is what the network computes; the metrics widen to float64 after the merge
        return {
            "index": index,
            "pool": pool.reshape(len(index), -1).float().cpu(),
            "spatial": spatial.reshape(len(index), -1).float().cpu(),
            "logits": logits.reshape(len(index), -1).float().cpu(),
        }


def extract_sets(
    extractor: torch.nn.Module, sets: list[np.ndarray], batch_size: int, trainer_cfg, parts_dir: Path
) -> list[FeatureSet] | None:
    """uint8 [N, H, W, C] image sets -> one FeatureSet each (None on ranks other than the main).

    The feature network always runs in float32, whatever trainer.precision the denoiser uses:
    metric features in bf16 would move FID by more than quantization does.
    """
    cfg = trainer_cfg.model_copy(update={"precision": "32-true"})
    module = FeatureModule(extractor, sets)
    preds, _, is_main = run_predict(module, IndexDataset(int(module.starts[-1])), batch_size, cfg, parts_dir)
    if not is_main:
        return None
    out = []
    for a, b in zip(module.starts[:-1], module.starts[1:]):
        out.append(FeatureSet(*(preds[k][a:b].double() for k in ("pool", "spatial", "logits"))))
    return out
