"""The denoising loop: diffusers schedulers, classifier-free guidance, one seed per image.

Numerically the same as diffusers' `DiTPipeline` for the same noise (tested to 1e-5), but the
null label is the model's own class count rather than a hard-coded 1000, the noise of image i
depends only on (seed, i), so any batching or number of processes gives the same images, and
a step callback exposes every x_t for calibration.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from pipeline.options import Scheduler

SCHEDULER_CLASSES = {
    Scheduler.DDIM: DDIMScheduler,
    Scheduler.DDPM: DDPMScheduler,
    Scheduler.DPM_SOLVER: DPMSolverMultistepScheduler,
}

StepCallback = Callable[[int, torch.Tensor, torch.Tensor], None]


def make_scheduler(name: str, config: dict, steps: int):
    """A fresh scheduler (they are stateful) with its timesteps set."""
    sched = SCHEDULER_CLASSES[name].from_config(config)
    sched.set_timesteps(steps)
    return sched


def guided_inputs(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, guided: bool, null_label: int) -> dict:
    """Model inputs for records (x_t, t, y) as the guided sampler feeds them: each record
    twice, with its label and with the null label, when guidance is on."""
    if guided:
        x, t, y = torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_label)])
    return {"hidden_states": x, "timestep": t, "class_labels": y}


@torch.no_grad()
def denoise(
    transformer,
    scheduler,
    latents: torch.Tensor,
    labels: torch.Tensor,
    *,
    guidance_scale: float,
    null_label: int,
    gens: list[torch.Generator] | None = None,
    on_step: StepCallback | None = None,
) -> torch.Tensor:
    """Run the reverse process from `latents` (x_T) and return x_0 (latent or pixel space).

    `on_step(step_index, t, x_t)` sees the model input of every step (before scaling).
    """
    channels = transformer.config.in_channels
    learned_sigma = transformer.config.out_channels // 2 == channels and transformer.config.out_channels != channels
    guided = guidance_scale > 1.0
    model_labels = torch.cat([labels, torch.full_like(labels, null_label)]) if guided else labels
    step_kwargs = {}
    if isinstance(scheduler, DDIMScheduler) and scheduler.config.clip_sample:
        # with clipping, eps must be recomputed from the clipped x0, or guidance blows up
        step_kwargs["use_clipped_model_output"] = True
    if gens is not None and isinstance(scheduler, DDPMScheduler):
        step_kwargs["generator"] = gens  # per-image step noise keeps images rank-independent
    x = latents
    for i, t in enumerate(scheduler.timesteps):
        if on_step is not None:
            on_step(i, t, x)
        model_in = torch.cat([x, x]) if guided else x
        model_in = scheduler.scale_model_input(model_in, t)
        t_batch = t[None].to(x.device).expand(model_in.shape[0])
        # a compiled model with CUDA graphs reuses its output buffers: each step is a new run
        torch.compiler.cudagraph_mark_step_begin()
        out = transformer(model_in, timestep=t_batch, class_labels=model_labels).sample
        eps = out[:, :channels] if learned_sigma else out
        if guided:
            cond, uncond = eps.chunk(2)
            eps = uncond + guidance_scale * (cond - uncond)
        x = scheduler.step(eps, t, x, **step_kwargs).prev_sample
    return x


@torch.no_grad()
def decode(x0: torch.Tensor, vae=None) -> torch.Tensor:
    """Latents (or pixels) -> images in [0, 1], float [B, C, H, W]."""
    if vae is not None:
        x0 = vae.decode(x0.to(vae.dtype) / vae.config.scaling_factor).sample
    return (x0 / 2 + 0.5).clamp(0, 1)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] in [0, 1] -> uint8 [B, H, W, C], rounding as PIL conversion does."""
    return (images.float() * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
