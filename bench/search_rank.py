"""How well the cheap fitnesses rank candidate plans, compared with FID (one population).

  python bench/search_rank.py --setting 4:8 --num-images 500 --out bench/results/search_rank_w4a8.json

The search's generation-0 population (the uniform plan and random plans within the budget, as
`search` draws them with search.seed) on the embedded default (data/ of a `dvc repro`). Every
candidate is scored by mse (calibration records), fid_fp (against FP images of the same seeds)
and fid (against the digits data), images from the search's sampler settings; with
--second-seed, fid again on images of other seeds: how well FID ranks its own repeat, the
ceiling any proxy can reach. Spearman and Kendall rank correlations.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torchmetrics.functional import kendall_rank_corrcoef, spearman_corrcoef

from pipeline.config import load_params
from pipeline.metrics.features import build_extractor, extract
from pipeline.metrics.fid import frechet_distance
from pipeline.models.loader import load_fp_model
from pipeline.models.tiny import load_digits_images
from pipeline.quant.cost import measure_shapes
from pipeline.search.evolution import Evolution, Settings
from pipeline.search.fitness import CandidateModel, ImageFitness, MSEFitness, SampleMSEFitness, Sampler
from pipeline.search.space import SearchSpace
from stages.calibration import calibration_batches
from stages.plan import plan_from_params


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--setting", default="4:8", help="weight_bits:act_bits")
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--second-seed", action="store_true")
    p.add_argument(
        "--sample-mse",
        type=int,
        nargs=2,
        default=[64, 10],
        metavar=("IMAGES", "STEPS"),
        help="images and DDIM steps of the sample_mse fitness",
    )
    p.add_argument("--merge", help="scores of an earlier run of this script: only the missing ones are computed")
    p.add_argument("--out", default="bench/results/search_rank.json")
    args = p.parse_args()
    wb, ab = (int(x) for x in args.setting.split(":"))
    cfg = load_params(
        "params.yaml",
        [
            f"quant.weight.bits={wb}",
            f"quant.act.bits={ab}",
            f"search.num_images={args.num_images}",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
        ],
    )
    sc = cfg.search
    fp = load_fp_model("data/model")
    model = fp.transformer
    base = plan_from_params(cfg.quant, model)
    batches = calibration_batches(fp, torch.device("cpu"), 64)
    space = SearchSpace(base, measure_shapes(model, base.layers, batches[0]), list(sc.group_sizes))
    budget = space.cost(space.base_genome).value(sc.budget_metric)
    evo = Evolution(space, Settings.of(sc, budget=budget, metric=sc.budget_metric))
    population = evo.candidates(0)

    extractor = build_extractor("digits", Path("data/model"))
    real, _ = load_digits_images()
    real_feats = extract(extractor, real, 500, progress=False)
    mse = MSEFitness(model, batches)
    run = {
        "steps": sc.steps,
        "scheduler": sc.scheduler,
        "guidance_scale": sc.guidance_scale,
        "batch_size": sc.batch_size,
        "trainer_cfg": cfg.trainer,
        "parts_dir": Path("data/.parts-rank"),
    }
    seeds = [sc.image_seed] + ([sc.image_seed + 1] if args.second_seed else [])
    old = json.loads(Path(args.merge).read_text())["scores"] if args.merge else {}
    need_fid = not old.get("fid")
    samplers = (
        [
            ImageFitness(
                Sampler(fp, num_images=args.num_images, seed=s, **run),
                extractor=extractor,
                device=torch.device("cpu"),
                feature_batch_size=500,
            )
            for s in seeds
        ]
        if need_fid
        else []
    )  # FP features of each seed
    n_img, n_steps = args.sample_mse
    sample_mse = SampleMSEFitness(Sampler(fp, num_images=n_img, seed=sc.image_seed, **(run | {"steps": n_steps})))
    candidates = CandidateModel(model, space, None)
    scores = {"mse": [], "sample_mse": [], "fid_fp": [], "fid": [], "fid_seed2": []} | old
    start = time.time()
    for i, genome in enumerate(population):
        m = candidates.use(genome)
        if len(scores["mse"]) <= i:
            scores["mse"].append(mse(m))
        if len(scores["sample_mse"]) <= i:
            scores["sample_mse"].append(sample_mse(m))
        for j, sampler in enumerate(samplers):
            feats = sampler.features(sampler.images())
            if j == 0:
                scores["fid_fp"].append(frechet_distance(feats, sampler.target))
            scores["fid" if j == 0 else "fid_seed2"].append(frechet_distance(feats, real_feats))
        print(f"{i}: " + "  ".join(f"{k} {v[-1]:.5g}" for k, v in scores.items() if v), flush=True)
    seconds = time.time() - start
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in scores.items() if v}
    corr = {}
    pairs = [
        ("mse", "fid"),
        ("sample_mse", "fid"),
        ("fid_fp", "fid"),
        ("mse", "fid_fp"),
        ("sample_mse", "fid_fp"),
        ("fid_seed2", "fid"),
    ]
    for a, b in pairs:
        if a in t and b in t:
            corr[f"{a} vs {b}"] = {
                "spearman": float(spearman_corrcoef(t[a], t[b])),
                "kendall": float(kendall_rank_corrcoef(t[a], t[b])),
            }
    result = {
        "setting": f"W{wb}A{ab}",
        "candidates": len(population),
        "num_images": args.num_images,
        "sample_mse": {"images": n_img, "steps": n_steps},
        "steps": sc.steps,
        "image_seeds": seeds,
        "scores": scores,
        "correlation": corr,
        "seconds": seconds,
        "date": time.strftime("%Y-%m-%d"),
        "machine": "CPU",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    for k, v in corr.items():
        print(f"{k}: Spearman {v['spearman']:.3f}, Kendall {v['kendall']:.3f}")
    for k, v in scores.items():
        if v:
            print(f"{k}: min {min(v):.5g} max {max(v):.5g}")


if __name__ == "__main__":
    main()
