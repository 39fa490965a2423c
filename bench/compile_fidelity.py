"""Compiled against eager sampling on the embedded default: the same images within what bound?

  python bench/compile_fidelity.py --num-images 1000 --mode default --out bench/results/compile_fidelity.json

The FP model of data/model and the quantized one of data/quant (a `dvc repro` run), each
sampled eager and under `torch.compile` (params.yaml's sampler, sample.seed) with the same noise;
reports, per model, the PSNR and largest grey-level difference of compiled against eager
images, the FID between the two sets, and each set's FID to FP eager (digit features), plus
the wall time of both and the compiled run's first batch.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import generate

from pipeline.config import load_params
from pipeline.metrics.features import build_extractor, extract
from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.fidelity import psnr
from pipeline.models.compile import compile_transformer
from pipeline.models.loader import load_fp_model
from pipeline.quant.checkpoint import load_quantized, read_checkpoint


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--mode", default="default", help="sample.compile value to compare with eager")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="bench/results/compile_fidelity.json")
    args = p.parse_args()
    cfg = load_params("params.yaml")
    extractor = build_extractor("digits", Path("data/model"))
    fp = load_fp_model("data/model")
    results, fp_feats = {}, None
    for name in ("fp", "quantized"):
        sets = {}
        for mode in ("eager", args.mode):
            model = load_fp_model("data/model").transformer
            if name == "quantized":
                plan, state = read_checkpoint(Path("data/quant"))
                load_quantized(model, plan, state, "data/quant")
            model = compile_transformer(model.to(args.device), mode)
            if fp.vae is not None:
                fp.vae.to(args.device)
            start = time.perf_counter()
            first = generate(model, fp, cfg.sample, min(cfg.sample.batch_size, args.num_images), cfg.sample.seed)
            first_s = time.perf_counter() - start
            images = generate(model, fp, cfg.sample, args.num_images, cfg.sample.seed)
            seconds = time.perf_counter() - start - first_s
            assert np.array_equal(first, images[: len(first)])  # the first batch is reproducible
            sets[mode] = (images, extract(extractor, images, 500), seconds, first_s)
            torch._dynamo.reset()
        (eager, fe, eager_s, _), (comp, fc, comp_s, first_s) = sets["eager"], sets[args.mode]
        fp_feats = fe if name == "fp" else fp_feats
        diff = np.abs(comp.astype(np.int16) - eager.astype(np.int16))
        results[name] = {
            "psnr_compiled_vs_eager": psnr(comp, eager),
            "max_grey_level_diff": int(diff.max()),
            "pixels_differing": float((diff > 0).mean()),
            "fid_compiled_vs_eager": frechet_distance(fc, fe),
            "fid_fp_eager": frechet_distance(fe, fp_feats),
            "fid_fp_compiled": frechet_distance(fc, fp_feats),
            "eager_s": round(eager_s, 2),
            "compiled_s": round(comp_s, 2),
            "compiled_first_batch_s": round(first_s, 2),
        }
        print(name, json.dumps(results[name]), flush=True)
    meta = {
        "num_images": args.num_images,
        "mode": args.mode,
        "sampler": f"{cfg.sample.scheduler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance_scale}",
        "device": torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads",
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2))


if __name__ == "__main__":
    main()
