"""The embedded default: a small class-conditional DiT trained on scikit-learn's digits.

8x8 grey images in pixel space, 10 classes, null label 10 for classifier-free guidance.
Small enough to train in a few minutes on 2 CPU cores, yet a real diffusers
`DiTTransformer2DModel` with the same layer names as DiT-XL/2, so every later stage runs on it
unchanged.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, DiTTransformer2DModel
from tqdm.auto import tqdm

NUM_CLASSES = 10
IMAGE_SIZE = 8


def load_digits_images() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 images [N, 8, 8, 1] (0..255) and int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.round(d.images / 16.0 * 255.0).astype(np.uint8)[..., None]
    return images, d.target.astype(np.int64)


def to_model_range(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, C] -> float [N, C, H, W] in [-1, 1], the diffusion model's pixel range."""
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def build_tiny_dit(num_layers: int, num_heads: int, head_dim: int, patch_size: int) -> DiTTransformer2DModel:
    model = DiTTransformer2DModel(
        num_attention_heads=num_heads,
        attention_head_dim=head_dim,
        in_channels=1,
        out_channels=1,
        num_layers=num_layers,
        sample_size=IMAGE_SIZE,
        patch_size=patch_size,
        num_embeds_ada_norm=NUM_CLASSES,
    )
    # diffusers does not apply the DiT paper's adaLN-Zero init; without it training is slow.
    for block in model.transformer_blocks:
        torch.nn.init.zeros_(block.norm1.linear.weight)
        torch.nn.init.zeros_(block.norm1.linear.bias)
    torch.nn.init.zeros_(model.proj_out_2.weight)
    torch.nn.init.zeros_(model.proj_out_2.bias)
    disable_label_dropout(model)
    return model


def disable_label_dropout(model: DiTTransformer2DModel) -> None:
    """Each block's label embedder drops labels on its own in train mode (and the final layer
    reuses block 0's), so drops differ per block. We drop labels once, ourselves, instead."""
    for module in model.modules():
        if module.__class__.__name__ == "LabelEmbedding":
            module.dropout_prob = 0.0


def noise_scheduler() -> DDPMScheduler:
    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True, prediction_type="epsilon")


def train_tiny_dit(
    model: DiTTransformer2DModel,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    warmup_steps: int,
    ema_decay: float,
    class_dropout: float,
    seed: int,
    progress: bool = True,
) -> tuple[DiTTransformer2DModel, list[float]]:
    """Epsilon-prediction DDPM training; returns the EMA model (in eval mode) and the loss curve."""
    gen = torch.Generator().manual_seed(seed)
    sched = noise_scheduler()
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0)
    lr_at = lambda i: (
        learning_rate * min(1.0, (i + 1) / max(1, warmup_steps)) * 0.5 * (1 + math.cos(math.pi * i / steps))
    )  # warm-up, then cosine decay
    model.train()
    losses: list[float] = []
    bar = tqdm(range(steps), desc="train tiny DiT", disable=not progress, mininterval=2.0)
    for i in bar:
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        x0, y = images[idx], labels[idx].clone()
        y[torch.rand(batch_size, generator=gen) < class_dropout] = NUM_CLASSES
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch_size,), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        pred = model(xt, timestep=t, class_labels=y).sample
        loss = F.mse_loss(pred, noise)
        for group in opt.param_groups:
            group["lr"] = lr_at(i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            # EMA warms up from the first steps so short runs still average something useful
            decay = min(ema_decay, (1 + i) / (10 + i))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        losses.append(loss.item())
        if i % 50 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
    model.eval()
    return ema, losses
