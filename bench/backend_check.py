"""Each backend against the fake-quant samples of the pipeline: same images? how fast?

  python bench/backend_check.py --backends fake int8 --out bench/results/backend_check.json

Loads data/model + data/quant through pipeline.inference (as a user would), generates the
images of data/samples (labels i mod classes, the sample stage's seed, steps, guidance and
batch) with every backend, and reports the wall time and how far each backend's images are from
data/samples (made by the fake backend) and from data/samples_fp.
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
from pipeline.metrics.fidelity import psnr


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backends", nargs="+", default=["fake", "int8"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--out", default=None)
    args = p.parse_args()
    s = yaml.safe_load(Path("params.yaml").read_text())["sample"]
    stage = np.load("data/samples/images.npz")["images"]
    fp = np.load("data/samples_fp/images.npz")["images"]
    rows = []
    for backend in args.backends:
        dit = load_quantized_dit(device=args.device, dtype=getattr(torch, args.dtype), backend=backend)
        labels = np.arange(len(stage)) % dit.model.num_classes
        start = time.perf_counter()
        images = dit.generate(labels, steps=s["steps"], guidance_scale=s["guidance_scale"], seed=s["seed"],
                              batch_size=s["batch_size"])
        seconds = time.perf_counter() - start
        diff = np.abs(images.astype(int) - stage.astype(int))
        rows.append({"backend": backend, "seconds": round(seconds, 2), "images": len(images),
                     "identical_images_to_sample_stage": int((diff.reshape(len(diff), -1).max(1) == 0).sum()),
                     "max_abs_diff": int(diff.max()), "psnr_vs_sample_stage": psnr(images, stage),
                     "psnr_vs_fp": psnr(images, fp),
                     "device": args.device if args.device != "cpu" else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
                     "dtype": args.dtype})
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
