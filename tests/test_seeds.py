import pytest
import torch

from pipeline.seeds import generators, image_seed, initial_noise


def test_image_seeds_are_distinct_and_give_distinct_noise():
    seeds = {image_seed(b, i) for b in range(3) for i in range(1000)}
    assert len(seeds) == 3000 and max(seeds) < 2**32  # torch's CPU generator keeps 32 bits
    noise = initial_noise(generators(1, torch.arange(3)) + generators(2, torch.arange(3)), (4,), torch.float32)
    assert torch.cdist(noise, noise).fill_diagonal_(1).min() > 1e-3
    with pytest.raises(ValueError):
        image_seed(4096, 0)
