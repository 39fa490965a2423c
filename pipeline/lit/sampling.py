"""LightningModules that run the denoiser: image sampling and calibration trajectories."""

from __future__ import annotations

import lightning as L
import torch

from pipeline.models.compile import compile_transformer
from pipeline.models.loader import FPModel
from pipeline.sampling import decode, denoise, make_scheduler, to_uint8
from pipeline.seeds import generators, image_seed, initial_noise


class _DenoiserModule(L.LightningModule):
    def __init__(
        self, fp: FPModel, *, scheduler: str, steps: int, guidance_scale: float, seed: int, compile: str = "eager"
    ):
        super().__init__()
        self.transformer = compile_transformer(fp.transformer, compile)
        self.vae = fp.vae
        self.scheduler_config = dict(fp.scheduler_config)
        self.scheduler_name = scheduler
        self.steps = steps
        self.guidance_scale = guidance_scale
        self.seed = seed
        self.num_classes = fp.num_classes
        self.null_label = fp.null_label
        self.latent_shape = fp.latent_shape

    @property
    def model_dtype(self) -> torch.dtype:
        return next(self.transformer.parameters()).dtype

    def _start(self, index: torch.Tensor) -> tuple[list[torch.Generator], torch.Tensor]:
        gens = generators(self.seed, index.cpu())
        noise = initial_noise(gens, self.latent_shape, torch.float32)
        return gens, noise.to(self.device, self.model_dtype)

    def _denoise(self, noise, labels, gens, on_step=None) -> torch.Tensor:
        sched = make_scheduler(self.scheduler_name, self.scheduler_config, self.steps)
        return denoise(
            self.transformer,
            sched,
            noise,
            labels.to(self.device),
            guidance_scale=self.guidance_scale,
            null_label=self.null_label,
            gens=gens,
            on_step=on_step,
        )


class SamplingModule(_DenoiserModule):
    """Image i: noise from seed (seed, i), class label i mod num_classes (balanced classes).
    With `decode=False` it returns the final latents (float32) instead of images."""

    def __init__(self, fp: FPModel, *, decode: bool = True, **kw):
        super().__init__(fp, **kw)
        self.decode = decode

    def predict_step(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        gens, noise = self._start(index)
        labels = index.cpu() % self.num_classes
        x0 = self._denoise(noise, labels, gens)
        if not self.decode:
            return {"index": index.cpu(), "latents": x0.float().cpu()}
        return {
            "index": index.cpu(),
            "images": to_uint8(decode(x0, self.vae)),
            "labels": labels,
            "seeds": torch.tensor([image_seed(self.seed, int(i)) for i in index]),
        }


class CalibrationModule(_DenoiserModule):
    """Trajectory i: random label and noise from its own seed; keeps x_t at `record_step[i]`."""

    def __init__(self, fp: FPModel, *, record_step: torch.Tensor, **kw):
        super().__init__(fp, **kw)
        self.record_step = record_step

    def predict_step(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        index = index.cpu()
        gens, noise = self._start(index)
        labels = torch.cat([torch.randint(0, self.num_classes, (1,), generator=g) for g in gens])
        want = self.record_step[index]
        kept = torch.empty(noise.shape, dtype=torch.float32)
        kept_t = torch.empty(len(index), dtype=torch.int64)

        def on_step(i: int, t: torch.Tensor, x: torch.Tensor) -> None:
            hit = want == i
            if hit.any():
                kept[hit] = x[hit.to(x.device)].float().cpu()
                kept_t[hit] = int(t)

        self._denoise(noise, labels, gens, on_step=on_step)
        return {"index": index, "x": kept, "t": kept_t, "y": labels, "step": want, "trajectory": index.clone()}


def stratified_steps(num_samples: int, steps: int, seed: int) -> torch.Tensor:
    """Step index for each trajectory: every step equally often (+-1), in random order."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.arange(num_samples) % steps
    return base[torch.randperm(num_samples, generator=gen)]
