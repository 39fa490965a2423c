"""How much FID moves by chance on the embedded default: the numbers later issues compare against.

  python bench/fid_noise.py --model data/model --num-images 1000 --seeds 0 1 2

Reports, with the digit-feature extractor of data/model:
  * real-vs-real floor: FID between two random halves of the 1797 digits, per split seed;
  * FP samples vs the digits: FID of num_images FP samples per sample seed (params.yaml sampler);
  * FP vs FP: FID between FP sample sets of different seeds (what fid_fp is when nothing changed
    but the noise).
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import torch
from _common import generate, summary

from pipeline.config import load_params
from pipeline.metrics.features import build_extractor, extract
from pipeline.metrics.fid import frechet_distance
from pipeline.models.loader import load_fp_model
from pipeline.models.tiny import load_digits_images


def _rounded(d: dict) -> dict:
    return {k: [round(x, 3) for x in v] if isinstance(v, list) else round(v, 3) for k, v in d.items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="data/model")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args()
    cfg = load_params(args.params)
    fp = load_fp_model(args.model)
    extractor = build_extractor("digits", args.model)
    real, _ = load_digits_images()
    real_feats = extract(extractor, real, 500)

    floor = []
    for seed in args.seeds:
        perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))
        half = len(real) // 2
        floor.append(frechet_distance(real_feats[perm[:half]], real_feats[perm[half:]]))

    start = time.time()
    sample_feats = {
        seed: extract(extractor, generate(fp.transformer, fp, cfg.sample, args.num_images, seed), 500)
        for seed in args.seeds
    }
    seconds = time.time() - start
    fid_real = [frechet_distance(f, real_feats) for f in sample_feats.values()]
    fid_fp = [frechet_distance(sample_feats[a], sample_feats[b]) for a, b in itertools.combinations(args.seeds, 2)]
    print(
        json.dumps(
            {
                "num_images": args.num_images,
                "sampler": f"{cfg.sample.scheduler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance_scale}",
                "seeds": args.seeds,
                "real_vs_real_halves": _rounded(summary(floor)),
                "fp_vs_digits": _rounded(summary(fid_real)),
                "fp_vs_fp_other_seed": _rounded(summary(fid_fp)),
                "sampling_seconds": round(seconds, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
