"""Cost of the granularity search on DiT-XL/2: one fitness evaluation, and the paper's search.

  python bench/search_fitness_cost.py --images 800 --steps 50 --batch 256 --precision bf16-true \
      --evals 3 --out bench/results/gpu_search_fitness_cost.json                           # GPU

A randomly initialised DiT-XL/2 256 transformer and an SD-VAE-config decoder (random weights:
the same compute as the real ones) run through the search's own code: CandidateModel (every gene's
QuantLinear built once per candidate group size, W4A8, candidates 32/64/128/192/288 as in the
reference, clipping search on), ImageFitness (the Lightning sampling module, DDIM, no guidance,
then FID on 2048-d features) and MSEFitness (256 calibration records). The Inception network is
not available here: features come from a fixed random projection to 2048 dimensions, so the FID
matrix square root is timed but the Inception forward (about 800 images at 299x299) is not.
Projected search = population + generations x (mutations + crossovers) evaluations, each at the
median of all timed evaluations of its fitness (the FP reference sampling before them is the
warm-up). `--recompute FILE` refreshes the medians and projections of a results file from its
stored timings (results measured before 2026-12-05 took the median of the last evaluations only).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from _common import XL_SCHEDULE, sd_vae, xl_transformer
from torch import nn

from pipeline.config import TrainerConfig
from pipeline.models.loader import FPModel
from pipeline.quant.apply import linear_in_features
from pipeline.quant.cost import measure_shapes
from pipeline.quant.plan import build_plan
from pipeline.quant.targets import DEFAULT_INCLUDE
from pipeline.search.fitness import CandidateModel, ImageFitness, MSEFitness, SampleMSEFitness, Sampler
from pipeline.search.space import SearchSpace


class RandomFeatures(nn.Module):
    """uint8 images -> 2048-d features by a fixed random projection (stands in for Inception)."""

    def __init__(self, pixels: int, dim: int = 2048):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("proj", torch.randn(pixels, dim, generator=g) / pixels**0.5)

    def forward(self, x):
        return x.flatten(1).float() @ self.proj


def xl_model(device, num_layers=28):
    transformer, vae = xl_transformer(num_layers), sd_vae()
    return FPModel(transformer.to(device), vae.to(device), dict(XL_SCHEDULE), {})


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--images", type=int, default=800)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--precision", default="bf16-true")
    p.add_argument("--evals", type=int, default=3)
    p.add_argument("--num-layers", type=int, default=28, help="fewer for a quick CPU smoke run")
    p.add_argument("--sample-mse", type=int, nargs=2, default=[64, 10], metavar=("IMAGES", "STEPS"))
    p.add_argument("--group-sizes", type=int, nargs="+", default=[32, 64, 128, 192, 288])
    p.add_argument("--out", default="bench/results/gpu_search_fitness_cost.json")
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    fp = xl_model(device, args.num_layers)
    model = fp.transformer
    trainer = TrainerConfig(accelerator="auto", devices=1, strategy="auto", precision=args.precision)
    base = build_plan(
        linear_in_features(model),
        method="qdit",
        include=DEFAULT_INCLUDE,
        exclude=[],
        weight_bits=4,
        group_size=128,
        weight_symmetric=False,
        clip_search=True,
        gptq=False,
        act_bits=8,
        act_mode="auto",
        act_group_size=None,
        act_symmetric=False,
        attn_bits=16,
    )
    g = torch.Generator().manual_seed(0)
    calib = [
        {
            "hidden_states": torch.randn(32, 4, 32, 32, generator=g).to(device),
            "timestep": torch.randint(0, 1000, (32,), generator=g).to(device),
            "class_labels": torch.randint(0, 1000, (32,), generator=g).to(device),
        }
        for _ in range(8)
    ]
    shapes = measure_shapes(model, base.layers, calib[0])
    space = SearchSpace(base, shapes, args.group_sizes)
    result = {"genes": len(space), "candidates": sorted({g for c in space.candidates.values() for g in c})}

    mse, t_mse_ref = timed(lambda: MSEFitness(model, calib))  # FP outputs, fp32
    extractor = RandomFeatures(256 * 256 * 3).to(device)
    run = {
        "scheduler": "ddim",
        "guidance_scale": 1.0,
        "seed": 2,
        "batch_size": args.batch,
        "trainer_cfg": trainer,
        "parts_dir": Path("/tmp/qdit-parts"),
    }
    images_fit, t_fp = timed(
        lambda: ImageFitness(
            Sampler(fp, num_images=args.images, steps=args.steps, **run),
            extractor=extractor,
            device=device,
            feature_batch_size=100,
        )
    )
    print(f"FP reference: {t_fp:.1f} s", flush=True)
    n_img, n_steps = args.sample_mse
    sample_mse, t_smse_ref = timed(lambda: SampleMSEFitness(Sampler(fp, num_images=n_img, steps=n_steps, **run)))
    candidates, t_build = timed(lambda: CandidateModel(model.to(device), space, None, progress=False))
    print(f"candidate build: {t_build:.1f} s", flush=True)
    rng = np.random.default_rng(0)
    evals = []
    for i in range(args.evals):
        genome = space.base_genome if i == 0 else space.random(rng)
        value, t = timed(lambda genome=genome: images_fit(candidates.use(genome)))
        evals.append({"seconds": t, "fid_fp": value})
        print(f"fid_fp eval {i}: {t:.1f} s (fid_fp {value:.3g})", flush=True)
    smse_evals = []
    for _ in range(args.evals):
        genome = space.random(rng)
        value, t = timed(lambda genome=genome: sample_mse(candidates.use(genome)))
        smse_evals.append({"seconds": t, "sample_mse": value})
        print(f"sample_mse eval: {t:.2f} s", flush=True)
    model.to(device).float()  # Lightning hands the model back on the CPU; MSE runs in fp32 as the stage does
    mse_evals = []
    for _ in range(args.evals):
        genome = space.random(rng)
        value, t = timed(lambda genome=genome: mse(candidates.use(genome)))
        mse_evals.append({"seconds": t, "mse": value})
    result |= {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor(),
        "torch": torch.__version__,
        "precision": args.precision,
        "batch": args.batch,
        "images": args.images,
        "steps": args.steps,
        "fp_reference_sampling_s": t_fp,
        "candidate_build_s": t_build,
        "mse_reference_s": t_mse_ref,
        "fid_fp_evals": evals,
        "mse_evals": mse_evals,
        "sample_mse": {"images": n_img, "steps": n_steps, "reference_s": t_smse_ref, "evals": smse_evals},
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    result = with_projections(result)
    print(json.dumps(result, indent=2))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))


PAPER_EVALS = 50 + 10 * (25 + 25)  # the reference's population, generations, mutations, crossovers


def with_projections(result: dict) -> dict:
    """Medians of every timed evaluation per fitness, and the projected search time from them."""
    median = lambda evals: float(np.median([e["seconds"] for e in evals]))
    build = result["candidate_build_s"]
    per_eval, per_mse = median(result["fid_fp_evals"]), median(result["mse_evals"])
    result |= {
        "fid_fp_eval_median_s": per_eval,
        "mse_eval_median_s": per_mse,
        "image_steps_per_s": result["images"] * result["steps"] / per_eval,
        "paper_search_evals": PAPER_EVALS,
        "paper_search_projected_h_fid": (build + result["fp_reference_sampling_s"] + PAPER_EVALS * per_eval) / 3600,
        "paper_search_projected_h_mse": (build + result["mse_reference_s"] + PAPER_EVALS * per_mse) / 3600,
    }
    smse = result.get("sample_mse")
    if smse and smse.get("evals"):
        smse["eval_median_s"] = median(smse["evals"])
        smse["paper_search_projected_h"] = (build + smse["reference_s"] + PAPER_EVALS * smse["eval_median_s"]) / 3600
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--recompute"]:
        for path in map(Path, sys.argv[2:]):
            path.write_text(json.dumps(with_projections(json.loads(path.read_text())), indent=2))
    else:
        main()
