"""The evaluation suite: FID, sFID, IS, KID, precision and recall from one feature pass.

Every image set is turned into features once (lit.features.extract_sets); every metric reads
them. The reference contributes features of its images and/or its precomputed statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from pipeline.errors import UserError
from pipeline.metrics.features import FeatureSet
from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.precision_recall import manifold_radii, precision_recall
from pipeline.metrics.reference import Stats
from pipeline.metrics.scores import inception_score, kid

METRICS = ("fid", "sfid", "is", "kid", "precision", "recall")


@dataclass
class RealFeatures:
    feats: FeatureSet | None
    pool_stats: Stats | None
    spatial_stats: Stats | None
    _radii: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def radii(self, k: int) -> torch.Tensor:
        """The reference's k-NN radii, computed once however many sets are compared with it."""
        if k not in self._radii:
            self._radii[k] = manifold_radii(self.feats.pool, k)
        return self._radii[k]


def _check_dim(name: str, fake: torch.Tensor, stats: Stats | None) -> None:
    if stats is not None and len(stats[0]) != fake.shape[1]:
        raise UserError(
            f"evaluate.reference: its '{name}' statistics are {len(stats[0])}-d but the "
            f"features are {fake.shape[1]}-d; statistics must come from the same feature "
            "network (ADM reference batches: evaluate.features = inception)"
        )


def distribution_metrics(
    fake: FeatureSet, real: RealFeatures, *, k: int = 3, kid_subsets: int = 100, kid_subset_size: int = 1000
) -> dict[str, float | None]:
    """Every metric of the suite for one generated set; a metric the reference cannot
    support (KID and precision/recall need reference images) is None."""
    _check_dim("mu/sigma", fake.pool, real.pool_stats)
    _check_dim("mu_s/sigma_s", fake.spatial, real.spatial_stats)
    pool = real.pool_stats if real.pool_stats is not None else real.feats.pool
    spatial = (
        real.spatial_stats
        if real.spatial_stats is not None
        else (real.feats.spatial if real.feats is not None else None)
    )
    out: dict[str, float | None] = {
        "fid": frechet_distance(fake.pool, pool),
        "sfid": frechet_distance(fake.spatial, spatial) if spatial is not None else None,
        "is": inception_score(fake.logits),
        "kid": None,
        "precision": None,
        "recall": None,
    }
    if real.feats is not None:
        out["kid"] = kid(fake.pool, real.feats.pool, kid_subsets, kid_subset_size)
        out["precision"], out["recall"] = precision_recall(fake.pool, real.feats.pool, k, real.radii(k))
    return out


def fidelity_fid(fake: FeatureSet, fp: FeatureSet) -> float:
    """FID of the generated set against the FP model's set from the same seeds."""
    return frechet_distance(fake.pool, fp.pool)
