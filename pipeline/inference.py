"""A quantized DiT for inference in a few lines, without DVC, Lightning or the stages.

    import torch
    from pipeline.inference import load_quantized_dit

    dit = load_quantized_dit("data/model", "data/quant", device="cuda", dtype=torch.bfloat16)
    images = dit.generate([207, 360, 387, 974], steps=50, guidance_scale=1.5, seed=0)  # uint8 [4, H, W, 3]
    pipe = dit.to_diffusers()     # diffusers' DiTPipeline around the quantized transformer
    out = pipe(class_labels=[207], num_inference_steps=50, guidance_scale=1.5)

`data/model` is the `model` stage's diffusers directory (architecture, the layers left in
floating point, VAE, scheduler); `data/quant` the `quantize` stage's plan.yaml and
quantized.safetensors. `generate` seeds image i of a call by (seed, i), exactly as the `sample`
stage does, so labels i mod classes with sample.seed reproduce data/samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import UserError
from pipeline.models.compile import compile_transformer
from pipeline.models.loader import FPModel, load_fp_model
from pipeline.quant.backends import use_backend
from pipeline.quant.checkpoint import load_quantized, read_checkpoint
from pipeline.quant.plan import QuantPlan
from pipeline.sampling import decode, denoise, make_scheduler, to_uint8
from pipeline.seeds import generators, initial_noise


@dataclass
class QuantizedDiT:
    model: FPModel  # its transformer holds the QuantLinear modules of `plan`
    plan: QuantPlan | None  # None: an FP model

    @property
    def device(self) -> torch.device:
        return next(self.model.transformer.buffers()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(p for p in self.model.transformer.parameters()).dtype

    @torch.inference_mode()
    def generate(
        self,
        class_labels,
        *,
        steps: int = 50,
        guidance_scale: float = 1.0,
        seed: int = 0,
        scheduler: str = "ddim",
        batch_size: int = 64,
    ) -> np.ndarray:
        """uint8 images [N, H, W, C], one per label."""
        m = self.model
        labels = torch.as_tensor(class_labels, dtype=torch.long).reshape(-1)
        if len(labels) and (labels.min() < 0 or labels.max() >= m.num_classes):
            raise UserError(f"class labels must lie in [0, {m.num_classes - 1}]; got {labels.tolist()}")
        out = []
        for start in range(0, len(labels), batch_size):
            index = torch.arange(start, min(len(labels), start + batch_size))
            gens = generators(seed, index)
            noise = initial_noise(gens, m.latent_shape, torch.float32).to(self.device, self.dtype)
            x0 = denoise(
                m.transformer,
                make_scheduler(scheduler, m.scheduler_config, steps),
                noise,
                labels[index].to(self.device),
                guidance_scale=guidance_scale,
                null_label=m.null_label,
                gens=gens,
            )
            out.append(to_uint8(decode(x0, m.vae)))
        return torch.cat(out).numpy()

    def to_diffusers(self):
        """diffusers' DiTPipeline on the quantized transformer (latent models only)."""
        from diffusers import DDIMScheduler, DiTPipeline

        if self.model.vae is None:
            raise UserError(
                "this model samples in pixel space and has no VAE, which diffusers' DiTPipeline "
                "needs (the embedded digits DiT): use generate()"
            )
        return DiTPipeline(
            transformer=self.model.transformer,
            vae=self.model.vae,
            scheduler=DDIMScheduler.from_config(self.model.scheduler_config),
        )


def load_quantized_dit(
    model_dir: str | Path = "data/model",
    quant_dir: str | Path = "data/quant",
    device: str | torch.device | None = None,
    dtype: torch.dtype = torch.float32,
    backend: str = "fake",
    compile: str = "eager",
) -> QuantizedDiT:
    """The FP model of `model_dir` with the quantized layers of `quant_dir`, on `device` in `dtype`,
    computed by `backend` (see pipeline/quant/backends.py); `compile` as params.yaml's
    sample.compile (pipeline/models/compile.py)."""
    fp = load_fp_model(model_dir)
    plan, state = read_checkpoint(quant_dir)
    load_quantized(fp.transformer, plan, state, str(quant_dir))
    use_backend(fp.transformer, backend)
    device = torch.device(device) if device is not None else torch.device("cpu")
    fp.transformer.to(device=device, dtype=dtype)
    if fp.vae is not None:
        fp.vae.to(device=device, dtype=dtype)
    compile_transformer(fp.transformer, compile)
    return QuantizedDiT(fp, plan)
