"""Stage `evaluate`: FID against the reference and fidelity to the FP samples -> metrics.json.

fid      FID of data/samples (the quantized model) against the reference set.
fid_fp_model  FID of data/samples_fp (the FP model) against the same reference.
fid_fp   FID of data/samples against data/samples_fp (same seeds, FP model).
psnr_fp  PSNR of the set against the FP images from the same noise (inf when all identical).
ssim_fp  mean SSIM against the same.
On small guided models `fid` can fall as quantization error grows; the *_fp metrics cannot.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.config import flat
from pipeline.errors import UserError
from pipeline.io import read_images, read_json, write_json
from pipeline.metrics.features import build_extractor, extract, resolve_kind
from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.fidelity import psnr, ssim
from pipeline.metrics.reference import load_reference
from pipeline.models.loader import default_device
from pipeline.tracking import log_stage
from stages.common import METRICS, MODEL, QUANT, SAMPLES, SAMPLES_FP, main


def run(cfg, args) -> None:
    e = cfg.evaluate
    info = read_json(MODEL / "model.json", "FP model description")
    samples = read_images(SAMPLES / "images.npz")
    fp = read_images(SAMPLES_FP / "images.npz")
    if not np.array_equal(samples["seeds"], fp["seeds"]) or samples["images"].shape != fp["images"].shape:
        raise UserError(f"{SAMPLES} and {SAMPLES_FP} were not generated with the same seeds and "
                        f"sizes ({samples['images'].shape} vs {fp['images'].shape}); rerun both "
                        "sampling stages with the same sample.* parameters")
    kind = resolve_kind(e.features, info)
    extractor = build_extractor(kind, MODEL, e.inception_weights)
    reference = load_reference(e.reference, samples["images"].shape[1:])
    start = time.time()
    device = default_device()
    feats = extract(extractor, samples["images"], e.batch_size, device, "features: samples")
    feats_fp = extract(extractor, fp["images"], e.batch_size, device, "features: FP samples")
    ref = reference if isinstance(reference, tuple) else \
        extract(extractor, reference, e.batch_size, device, "features: reference")
    metrics = {
        "fid": frechet_distance(feats, ref),
        "fid_fp_model": frechet_distance(feats_fp, ref),
        "fid_fp": frechet_distance(feats, feats_fp),
        "psnr_fp": psnr(samples["images"], fp["images"]),
        "ssim_fp": ssim(samples["images"], fp["images"]),
        "num_images": int(len(samples["images"])),
    }
    quant = read_json(QUANT / "quant.json", "quantization summary")
    metrics |= {"size_mb": quant["size_mb"], "fp16_size_mb": quant["fp16_size_mb"]}
    write_json(METRICS, metrics | {"features": kind, "reference": e.reference, "quant": quant["method"]})
    print("[evaluate] " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    log_stage(cfg, "evaluate", flat(cfg, ["evaluate", "sample", "quant"]),
              metrics | {"seconds": time.time() - start}, [METRICS, SAMPLES / "grid.png"])


def cli(argv: list[str] | None = None) -> None:
    main("evaluate", run, argv=argv)


if __name__ == "__main__":
    cli()
