"""KID and Inception Score through torchmetrics, from features computed once (features.py).

Both draw random subsets or permutations from torch's global generator: they run inside a
forked, fixed-seed generator so the same features always give the same score.
"""

from __future__ import annotations

import math
import warnings

import torch
from torchmetrics.image.inception import InceptionScore
from torchmetrics.image.kid import KernelInceptionDistance

from pipeline.metrics.fid import Precomputed

IS_SPLIT_SIZE = 5000  # images per split, as the ADM evaluator (10,000 images -> 2 splits)


def kid(fake: torch.Tensor, real: torch.Tensor, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance (mean over `subsets` random subsets); subsets shrink to the
    smaller set when it holds fewer than `subset_size` points."""
    size = min(subset_size, len(fake), len(real))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images per set; got {len(fake)} generated, {len(real)} real")
    with warnings.catch_warnings():  # "will save all extracted features": they are already in memory
        warnings.simplefilter("ignore", UserWarning)
        metric = KernelInceptionDistance(
            feature=Precomputed(fake.shape[1]), subsets=subsets, subset_size=size, sync_on_compute=False
        ).double()
    metric.update(real.double(), real=True)
    metric.update(fake.double(), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, _ = metric.compute()
    return float(mean)


def inception_score(logits: torch.Tensor, seed: int = 0) -> float:
    """IS = exp(E KL(p(y|x) || p(y))) from class logits, averaged over splits of 5000 images."""
    splits = max(1, math.ceil(len(logits) / IS_SPLIT_SIZE))
    with warnings.catch_warnings():  # the buffer notice, and the spread of a single split
        warnings.simplefilter("ignore", UserWarning)
        metric = InceptionScore(feature=Precomputed(logits.shape[1]), splits=splits, sync_on_compute=False).double()
        metric.update(logits.double())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mean, _ = metric.compute()
    return float(mean)
