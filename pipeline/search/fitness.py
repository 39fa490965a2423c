"""Fitness of a candidate plan (lower is better), and the model that switches between plans.

    mse     relative mean squared error of the denoiser output against FP on the calibration
            records: ||eps_q - eps_fp||^2 / ||eps_fp||^2. One forward pass; far cheaper.
    sample_mse  relative squared error of the final samples (latents, before decoding) against
            the FP model's samples from the same noise: ||x0_q - x0_fp||^2 / ||x0_fp||^2.
            Whole trajectories, so errors compound as they do when sampling; no features.
    fid_fp  FID of `num_images` generated images against the FP model's images of the same
            seeds: fidelity to the model being quantized.
    fid     FID of the same images against the reference set (the paper's choice).
Images come from the Lightning sampling module, so they spread over the trainer's devices;
every candidate gets the same seeds and labels, so fitness differences are not sampling noise.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from tqdm.auto import tqdm

from pipeline.lit.runner import IndexDataset, broadcast_from_main, run_predict
from pipeline.lit.sampling import SamplingModule
from pipeline.metrics.features import extract
from pipeline.metrics.fid import frechet_distance
from pipeline.models.loader import FPModel
from pipeline.options import Fitness
from pipeline.quant.apply import (
    gptq_codes,
    input_hessians,
    outputs,
    prepare,
    quant_linear,
    set_attention,
    set_module,
    timestep_context,
)
from pipeline.quant.errors import PlanError
from pipeline.quant.quantizer import FP_BITS
from pipeline.search.space import Genome, SearchSpace


class CandidateModel:
    """The transformer with the fixed layers quantized once and every gene's QuantLinear built
    once per candidate group size, so a candidate is applied by swapping modules. Variants are
    rounded to nearest (with the plan's clipping search: a layer's codes do not depend on the
    other layers), or, when the plan asks for GPTQ, by GPTQ from the Hessians of the FP model's
    inputs on `calibration` (one pass, shared by every variant; `quantize` then redoes GPTQ
    block by block for the chosen plan). Input transforms (smoothing, RepQ) and low-rank
    branches are in every variant."""

    def __init__(self, model: nn.Module, space: SearchSpace, stats=None, progress: bool = True, calibration=None):
        """stats: activation statistics, for static ranges and input transforms (see quantize);
        calibration: model keyword arguments, for GPTQ."""
        self.model = model
        self.space = space
        base = space.base
        prepared = prepare(model, base, stats)  # every layer's input transform, once
        ranges = prepared.ranges
        hessians: dict = {}
        if base.gptq:
            if not calibration:
                raise PlanError("the plan asks for GPTQ, which needs calibration inputs (model keyword arguments)")
            weighted = [n for n, lp in base.layers.items() if lp.weight_bits != FP_BITS]
            # the inputs' device: a Lightning fitness pass before this may have left the model on the CPU
            model.to(next(v.device for v in calibration[0].values() if torch.is_tensor(v)))
            hessians = input_hessians(model, weighted, calibration, progress)
        ctx = timestep_context(model, base)

        def build(name: str, lp) -> nn.Module:
            codes = gptq_codes(model.get_submodule(name), lp, base, hessians[name]) if name in hessians else None
            return quant_linear(model, name, lp, base, ranges, ctx, codes)

        genes = set(space.genes)
        self.variants: dict[tuple[str, int], nn.Module] = {}
        todo = [(n, g) for n in space.genes for g in space.candidates[n]]
        for name, g in tqdm(todo, desc="quantize candidates", disable=not progress, mininterval=2.0):
            self.variants[(name, g)] = build(name, space.layer_plan(name, g))
        for name, lp in base.layers.items():
            if name not in genes:
                set_module(model, name, build(name, lp))
        set_attention(model, base)
        self.current: Genome | None = None

    def use(self, genome: Genome) -> nn.Module:
        """Put the genome's variants into the model, on the model's current device and dtype."""
        ref = next(p for p in self.model.parameters() if p.is_floating_point())
        for name, g in zip(self.space.genes, genome):
            module = self.variants[(name, g)].to(ref.device, ref.dtype)
            set_module(self.model, name, module)
        self.current = genome
        return self.model


def _relative_mse(x: torch.Tensor, reference: torch.Tensor) -> float:
    ref = reference.double()
    return float((x.double() - ref).pow(2).mean() / ref.pow(2).mean())


class MSEFitness:
    def __init__(self, fp_model: nn.Module, batches: list[dict]):
        self.batches = batches
        self.reference = outputs(fp_model, batches)  # before any layer is quantized

    def __call__(self, model: nn.Module) -> float:
        return _relative_mse(outputs(model, self.batches), self.reference)


class Sampler:
    """The same `num_images` seeds and labels for every candidate, through the Lightning
    sampling module; results only on the main process (None elsewhere)."""

    def __init__(
        self,
        fp: FPModel,
        *,
        num_images: int,
        steps: int,
        scheduler: str,
        guidance_scale: float,
        seed: int,
        batch_size: int,
        trainer_cfg,
        parts_dir,
    ):
        self.fp = fp
        self.settings = {"scheduler": scheduler, "steps": steps, "guidance_scale": guidance_scale, "seed": seed}
        self.num_images, self.batch_size = num_images, batch_size
        self.trainer_cfg, self.parts_dir = trainer_cfg, parts_dir

    def run(self, decode: bool) -> torch.Tensor | None:
        """uint8 images (decode) or float32 final latents, [num_images, ...]."""
        module = SamplingModule(self.fp, decode=decode, **self.settings)
        preds, _, is_main = run_predict(
            module, IndexDataset(self.num_images), self.batch_size, self.trainer_cfg, self.parts_dir, progress=False
        )
        return (preds["images"] if decode else preds["latents"]) if is_main else None


class ImageFitness:
    """FID of the candidate's images against fixed features: the FP model's images of the same
    seeds (fid_fp) or the reference set (fid). Only the main process holds the features; the
    value is broadcast so every process takes the same search decisions."""

    def __init__(self, sampler: Sampler, *, extractor: nn.Module, device, feature_batch_size: int, target=None):
        self.sampler = sampler
        self.extractor, self.device, self.feature_batch_size = extractor, device, feature_batch_size
        self.target = target  # reference features or (mu, sigma); None: the FP model's own images
        if target is None:
            images = self.images()
            if images is not None:
                self.target = self.features(images)

    def images(self) -> np.ndarray | None:
        images = self.sampler.run(decode=True)
        return images.numpy() if images is not None else None

    def features(self, images: np.ndarray) -> torch.Tensor:
        return extract(self.extractor, images, self.feature_batch_size, self.device, progress=False)

    def __call__(self, model: nn.Module) -> float:
        images = self.images()
        value = frechet_distance(self.features(images), self.target) if images is not None else None
        return broadcast_from_main(value)


class SampleMSEFitness:
    """sample_mse: the candidate's final samples against the FP model's, same seeds and labels."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler
        self.reference = sampler.run(decode=False)

    def __call__(self, model: nn.Module) -> float:
        x = self.sampler.run(decode=False)
        return broadcast_from_main(_relative_mse(x, self.reference) if x is not None else None)


def make_fitness(
    kind: str,
    fp: FPModel,
    model: nn.Module,
    batches: list[dict],
    device,
    *,
    images: dict,
    trainer_cfg,
    parts_dir,
    features: str,
    model_dir,
    inception_weights: str | None,
    reference: str,
    feature_batch_size: int,
):
    """The fitness `kind` (mse | sample_mse | fid_fp | fid) of candidates of `model`, with its FP
    references computed now, before any layer is quantized. `images`: the Sampler's settings
    (num_images, steps, scheduler, guidance_scale, seed, batch_size); `features`, `reference`
    and `inception_weights` name the feature network (digits: the classifier in `model_dir`) and
    the reference set of the FIDs."""
    if kind == Fitness.MSE:
        return MSEFitness(model, batches)
    sampler = Sampler(fp, **images, trainer_cfg=trainer_cfg, parts_dir=parts_dir)
    if kind == Fitness.SAMPLE_MSE:
        return SampleMSEFitness(sampler)
    from pipeline.metrics.features import build_extractor, resolve_kind
    from pipeline.metrics.reference import load_reference

    extractor = build_extractor(resolve_kind(features, fp.info), model_dir, inception_weights)
    target = None
    if kind == Fitness.FID:
        ref = load_reference(reference, image_shape(fp))
        target = (
            ref.pool_stats
            if ref.pool_stats is not None
            else extract(extractor, ref.images, feature_batch_size, device, "features: reference")
        )
    return ImageFitness(
        sampler, extractor=extractor, device=device, feature_batch_size=feature_batch_size, target=target
    )


def image_shape(fp: FPModel) -> tuple[int, ...]:
    """[H, W, C] of the images the model makes: one zero latent decoded."""
    from pipeline.sampling import decode, to_uint8

    with torch.no_grad():
        latent = torch.zeros(1, *fp.latent_shape)
        if fp.vae is not None:
            latent = latent.to(next(fp.vae.parameters()).device)
        return tuple(to_uint8(decode(latent, fp.vae)).shape[1:])
