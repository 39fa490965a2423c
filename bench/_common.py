"""Helpers shared by the bench scripts (not part of the package)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.sampling import decode, denoise, make_scheduler, to_uint8
from pipeline.seeds import generators, initial_noise


def generate(transformer, fp, sample_cfg, n: int, seed: int) -> np.ndarray:
    """n images (uint8 NHWC) exactly as the sample stage makes them, without Lightning."""
    s = sample_cfg
    out = []
    for start in range(0, n, s.batch_size):
        index = torch.arange(start, min(n, start + s.batch_size))
        gens = generators(seed, index)
        noise = initial_noise(gens, fp.latent_shape, torch.float32)
        x0 = denoise(transformer, make_scheduler(s.scheduler, fp.scheduler_config, s.steps), noise,
                     index % fp.num_classes, guidance_scale=s.guidance_scale, null_label=fp.null_label, gens=gens)
        out.append(to_uint8(decode(x0, fp.vae)))
    return torch.cat(out).numpy()


def summary(values: list[float]) -> dict:
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "values": [float(v) for v in values]}
