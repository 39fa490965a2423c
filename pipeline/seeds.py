"""Per-image seeds: image i of a set depends on (base seed, i) only, never on batch or rank."""

from __future__ import annotations

import torch

from pipeline.options import MAX_BASE_SEED, MAX_IMAGES  # 12 bits of base seed, 20 of image index


def image_seed(base_seed: int, index: int) -> int:
    """Seed of image `index`: distinct across base seeds, independent of batching and rank."""
    if not (0 <= base_seed <= MAX_BASE_SEED and 0 <= index < MAX_IMAGES):
        raise ValueError(f"seed {base_seed} / image {index} outside 0..{MAX_BASE_SEED} / 0..{MAX_IMAGES - 1}")
    return (int(base_seed) << 20) + int(index)


def generators(base_seed: int, indices: torch.Tensor) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(image_seed(base_seed, int(i))) for i in indices]


def initial_noise(gens: list[torch.Generator], shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """One draw per image from its own generator, as diffusers' randn_tensor does for a list."""
    return torch.cat([torch.randn((1, *shape), generator=g, dtype=dtype) for g in gens])
