"""Stage `evaluate`: the metric suite on the quantized and the FP samples -> metrics.json.

Against the reference set (evaluate.reference), for the quantized samples (data/samples):
fid, sfid, is, kid, precision, recall; the same for the FP model's samples
(data/samples_fp) with the suffix `_fp_model` - the FP reference row of every table.
Fidelity to the FP model, image by image from the same noise:
fid_fp   FID of data/samples against data/samples_fp.
psnr_fp  PSNR of the set (inf when all identical); ssim_fp  mean SSIM.
On small guided models `fid` can fall as quantization error grows; the *_fp metrics cannot.
Every image set goes through the feature network once, in one Lightning predict run on
trainer.devices (always float32).
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.config import flat
from pipeline.errors import UserError
from pipeline.io import read_images, read_json, write_json
from pipeline.lit.features import extract_sets
from pipeline.metrics.features import build_extractor, resolve_kind
from pipeline.metrics.fidelity import psnr, ssim
from pipeline.metrics.reference import load_reference
from pipeline.metrics.suite import RealFeatures, distribution_metrics, fidelity_fid
from pipeline.tracking import log_stage
from stages.common import DATA, METRICS, MODEL, QUANT, SAMPLES, SAMPLES_FP, check_inputs, main, provenance


def run(cfg, args) -> None:
    e = cfg.evaluate
    check_inputs(SAMPLES / "info.json", SAMPLES_FP / "info.json", QUANT / "quant.json")
    info = read_json(MODEL / "model.json", "FP model description")
    samples = read_images(SAMPLES / "images.npz")
    fp = read_images(SAMPLES_FP / "images.npz")
    if not np.array_equal(samples["seeds"], fp["seeds"]) or samples["images"].shape != fp["images"].shape:
        raise UserError(
            f"{SAMPLES} and {SAMPLES_FP} were not generated with the same seeds and "
            f"sizes ({samples['images'].shape} vs {fp['images'].shape}); rerun both "
            "sampling stages with the same sample.* parameters"
        )
    quant = read_json(QUANT / "quant.json", "quantization summary")
    kind = resolve_kind(e.features, info)
    extractor = build_extractor(kind, MODEL, e.inception_weights)
    reference = load_reference(e.reference, samples["images"].shape[1:])
    start = time.time()
    sets = [samples["images"], fp["images"]] + ([reference.images] if reference.images is not None else [])
    extracted = extract_sets(extractor, sets, e.batch_size, cfg.trainer, DATA / ".parts-evaluate")
    if extracted is None:  # a DDP rank other than the main one: its part is written
        return
    feats, feats_fp, *ref = extracted
    real = RealFeatures(ref[0] if ref else None, reference.pool_stats, reference.spatial_stats)
    options = dict(k=e.nearest_k, kid_subsets=e.kid_subsets, kid_subset_size=e.kid_subset_size)
    metrics = distribution_metrics(feats, real, **options)
    metrics |= {f"{k}_fp_model": v for k, v in distribution_metrics(feats_fp, real, **options).items()}
    metrics |= {
        "fid_fp": fidelity_fid(feats, feats_fp),
        "psnr_fp": psnr(samples["images"], fp["images"]),
        "ssim_fp": ssim(samples["images"], fp["images"]),
        "num_images": int(len(samples["images"])),
        "size_mb": quant["size_mb"],
        "fp16_size_mb": quant["fp16_size_mb"],
        "gbitops": quant["gbitops"],
    }
    missing = [k for k, v in metrics.items() if v is None]
    if missing:
        print(
            f"[evaluate] {', '.join(missing)}: null, the reference {e.reference!r} holds statistics "
            "but no images (KID and precision/recall compare image features)"
        )
    write_json(
        METRICS,
        metrics
        | {
            "features": kind,
            "reference": e.reference,
            "quant": quant["method"],
            "provenance": provenance(cfg, "evaluate"),
        },
    )
    print("[evaluate] " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items() if v is not None))
    log_stage(
        cfg,
        "evaluate",
        flat(cfg, ["evaluate", "sample", "quant", "search", "calibrate"]),
        metrics | {"seconds": time.time() - start},
        [METRICS, SAMPLES / "grid.png"],
    )


def cli(argv: list[str] | None = None) -> None:
    main("evaluate", run, argv=argv)


if __name__ == "__main__":
    cli()
