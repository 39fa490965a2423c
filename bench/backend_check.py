"""Each backend against the fake-quant samples of the pipeline: same images? how fast?

  python bench/backend_check.py --backends fake int8 --out bench/results/backend_check.json
  python bench/backend_check.py --quant /tmp/w8a8/quant --backends fake fp8    # another quantization

Loads data/model + a quantization (default data/quant) through pipeline.inference (as a user
would), generates the images of data/samples (labels i mod classes, the sample stage's seed,
steps, guidance and batch) with every backend, and reports the wall time, how far each
backend's images are from the first backend's and from data/samples_fp, and the digit-feature
FID of each set against all 1797 digits (`fid`) and against data/samples_fp (`fid_fp`), to
compare with the seed noise of FID (BENCHMARKS.md, "How much FID moves by chance").
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from pipeline.inference import load_quantized_dit
from pipeline.metrics.features import build_extractor, extract
from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.fidelity import psnr
from pipeline.models.tiny import load_digits_images


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", nargs="+", default=["fake", "int8"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--quant", default="data/quant", help="the quantize stage's output directory")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    s = yaml.safe_load(Path("params.yaml").read_text())["sample"]
    fp = np.load("data/samples_fp/images.npz")["images"]
    extractor = build_extractor("digits", "data/model")
    real_feats = extract(extractor, load_digits_images()[0], 500)
    fp_feats = extract(extractor, fp, 500)
    rows, first = [], None
    for backend in args.backends:
        dit = load_quantized_dit(
            quant_dir=args.quant, device=args.device, dtype=getattr(torch, args.dtype), backend=backend
        )
        labels = np.arange(len(fp)) % dit.model.num_classes
        start = time.perf_counter()
        images = dit.generate(
            labels, steps=s["steps"], guidance_scale=s["guidance_scale"], seed=s["seed"], batch_size=s["batch_size"]
        )
        seconds = time.perf_counter() - start
        first = images if first is None else first
        diff = np.abs(images.astype(int) - first.astype(int))
        feats = extract(extractor, images, 500)
        rows.append(
            {
                "backend": backend,
                "quant": args.quant,
                "seconds": round(seconds, 2),
                "images": len(images),
                f"identical_images_to_{args.backends[0]}": int((diff.reshape(len(diff), -1).max(1) == 0).sum()),
                "max_abs_diff": int(diff.max()),
                f"psnr_vs_{args.backends[0]}": psnr(images, first),
                "psnr_vs_fp": psnr(images, fp),
                "fid": frechet_distance(feats, real_feats),
                "fid_fp": frechet_distance(feats, fp_feats),
                "device": args.device
                if args.device != "cpu"
                else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
                "dtype": args.dtype,
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
