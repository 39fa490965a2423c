"""Helpers shared by the bench scripts (not part of the package)."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.inference import QuantizedDiT
from pipeline.models.loader import FPModel


def generate(transformer, fp, sample_cfg, n: int, seed: int) -> np.ndarray:
    """n images (uint8 NHWC) of `transformer` (FP or quantized) with fp's VAE and scheduler,
    exactly as the sample stage makes them, without Lightning."""
    s = sample_cfg
    model = QuantizedDiT(FPModel(transformer, fp.vae, fp.scheduler_config, fp.info), plan=None)
    return model.generate(
        np.arange(n) % fp.num_classes,
        steps=s.steps,
        guidance_scale=s.guidance_scale,
        seed=seed,
        scheduler=s.scheduler,
        batch_size=s.batch_size,
    )


def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def summary(values: list[float]) -> dict:
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
        "values": [float(v) for v in values],
    }


# DiT-XL/2 256 as diffusers builds it (28 blocks, hidden 1152, 16 heads, 32x32x4 latents,
# learned sigma), with random weights: the real compute, no download. The VAE has the SD
# VAE's config (facebook/DiT-XL-2-256 ships sd-vae-ft-ema), so decoding costs what it will.
XL_SCHEDULE = {
    "num_train_timesteps": 1000,
    "beta_schedule": "linear",
    "beta_start": 1e-4,
    "beta_end": 0.02,
    "clip_sample": False,
}


def xl_transformer(num_layers: int = 28):
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    return DiTTransformer2DModel(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=1000,
    ).eval()


def sd_vae():
    from diffusers import AutoencoderKL

    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        sample_size=256,
    ).eval()
    vae.config.scaling_factor = 0.18215
    return vae


def save_xl_pipeline(path):
    """A local diffusers directory shaped like facebook/DiT-XL-2-256, random weights."""
    from diffusers import DDIMScheduler, DiTPipeline

    DiTPipeline(transformer=xl_transformer(), vae=sd_vae(), scheduler=DDIMScheduler(**XL_SCHEDULE)).save_pretrained(
        path
    )
    return path
