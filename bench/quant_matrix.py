"""Quality of each quantization setting on the embedded default, over several sample seeds.

  python bench/quant_matrix.py --num-images 1000 --seeds 0 1 2 --out bench/results/quant_matrix.json

Uses data/model, data/calib and data/stats of a `dvc repro` run and the sampler settings of
params.yaml. Each setting is quantized once (quantization is deterministic), then sampled with
every seed; FP samples of the same seed are the fidelity reference. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from _common import generate, summary
from safetensors.torch import load_file

from pipeline.config import load_params
from pipeline.io import read_calibration
from pipeline.metrics.features import build_extractor, extract
from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.fidelity import psnr, ssim
from pipeline.models.loader import load_fp_model
from pipeline.models.tiny import load_digits_images
from pipeline.quant.apply import linear_in_features, quantize
from pipeline.quant.cost import model_size
from pipeline.quant.plan import build_plan
from pipeline.quant.targets import DEFAULT_INCLUDE
from pipeline.sampling import guided_inputs

# (label, method, weight bits, act bits, group size, act mode, gptq)
SETTINGS = [
    ("RTN W8A8", "rtn", 8, 8, None, "auto", False),
    ("RTN W4A8", "rtn", 4, 8, None, "auto", False),
    ("RTN W4A4", "rtn", 4, 4, None, "auto", False),
    ("Q-DiT W8A8", "qdit", 8, 8, 32, "auto", False),
    ("Q-DiT W6A8", "qdit", 6, 8, 32, "auto", False),
    ("Q-DiT W4A8", "qdit", 4, 8, 32, "auto", False),
    ("Q-DiT W4A16", "qdit", 4, 16, 32, "auto", False),
    ("Q-DiT W16A8", "qdit", 16, 8, 32, "auto", False),
    ("Q-DiT W4A4", "qdit", 4, 4, 32, "auto", False),
    ("Q-DiT W4A4 g16", "qdit", 4, 4, 16, "auto", False),
    ("Q-DiT W4A8 + GPTQ", "qdit", 4, 8, 32, "auto", True),
    # ablation: RTN -> + group-wise weights (static A) -> + dynamic A (= Q-DiT)
    ("+ groups, static A W4A8", "qdit", 4, 8, 32, "static", False),
    ("+ groups, static A W4A4", "qdit", 4, 4, 32, "static", False),
    # activations alone
    ("static A W16A8", "qdit", 16, 8, 32, "static", False),
    ("static-per-timestep A W16A8", "qdit", 16, 8, 32, "static_timestep", False),
    ("static A W16A4", "qdit", 16, 4, 32, "static", False),
    ("static-per-timestep A W16A4", "qdit", 16, 4, 32, "static_timestep", False),
    ("Q-DiT W16A4", "qdit", 16, 4, 32, "auto", False),
]


def calibration_batches(fp, batch_size=64):
    records, manifest = read_calibration("data/calib")
    x, t, y = (torch.from_numpy(records[k]) for k in ("x", "t", "y"))
    return [
        guided_inputs(
            x[i : i + batch_size],
            t[i : i + batch_size],
            y[i : i + batch_size],
            manifest["guidance_scale"] > 1.0,
            fp.null_label,
        )
        for i in range(0, len(x), batch_size)
    ]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--num-images", type=int, default=1000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="*", help="labels of the settings to run (default: all)")
    p.add_argument("--out", default="bench/results/quant_matrix.json")
    args = p.parse_args()
    cfg = load_params(args.params)
    fp = load_fp_model("data/model")
    stats = load_file("data/stats/stats.safetensors")
    extractor = build_extractor("digits", Path("data/model"))
    real, _ = load_digits_images()
    real_feats = extract(extractor, real, 500)
    batches = calibration_batches(fp)

    fp_images, fp_feats, results = {}, {}, {}
    for seed in args.seeds:
        fp_images[seed] = generate(fp.transformer, fp, cfg.sample, args.num_images, seed)
        fp_feats[seed] = extract(extractor, fp_images[seed], 500)
    results["FP"] = {
        "fid": summary([frechet_distance(fp_feats[s], real_feats) for s in args.seeds]),
        "size_mb": model_size(fp.transformer)["fp16_size_mb"],
    }
    print(f"FP: {results['FP']['fid']['mean']:.3f}", flush=True)

    for label, method, wb, ab, g, mode, gptq in SETTINGS:
        if args.only and label not in args.only:
            continue
        model = load_fp_model("data/model").transformer
        plan = build_plan(
            linear_in_features(model),
            method=method,
            include=DEFAULT_INCLUDE,
            exclude=[],
            weight_bits=wb,
            group_size=g or 32,
            weight_symmetric=False,
            clip_search=True,
            gptq=gptq,
            act_bits=ab,
            act_mode=mode,
            act_group_size=None,
            act_symmetric=False,
            attn_bits=16,
        )
        quantize(model, plan, stats=stats, calibration=batches, progress=False)
        row = {"fid": [], "fid_fp": [], "psnr_fp": [], "ssim_fp": []}
        for seed in args.seeds:
            images = generate(model, fp, cfg.sample, args.num_images, seed)
            feats = extract(extractor, images, 500)
            row["fid"].append(frechet_distance(feats, real_feats))
            row["fid_fp"].append(frechet_distance(feats, fp_feats[seed]))
            row["psnr_fp"].append(psnr(images, fp_images[seed]))
            row["ssim_fp"].append(ssim(images, fp_images[seed]))
        results[label] = {k: summary(v) for k, v in row.items()} | {"size_mb": model_size(model)["size_mb"]}
        r = results[label]
        print(
            f"{label}: fid {r['fid']['mean']:.3f}  fid_fp {r['fid_fp']['mean']:.3f}  "
            f"psnr_fp {r['psnr_fp']['mean']:.2f}",
            flush=True,
        )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "num_images": args.num_images,
        "seeds": args.seeds,
        "sampler": f"{cfg.sample.scheduler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance_scale}",
        "torch": torch.__version__,
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    print()
    print("| setting | size MB | fid | fid_fp | psnr_fp (dB) | ssim_fp |")
    print("| --- | --- | --- | --- | --- | --- |")
    fmt = lambda d, spec=".3g": f"{d['mean']:{spec}} +- {d['std']:.2g}"
    for label, r in results.items():
        if label == "FP":
            print(f"| FP | {r['size_mb']:.3f} | {fmt(r['fid'])} | 0 | inf | 1 |")
            continue
        print(
            f"| {label} | {r['size_mb']:.3f} | {fmt(r['fid'])} | {fmt(r['fid_fp'])} | {fmt(r['psnr_fp'], '.2f')} | "
            f"{fmt(r['ssim_fp'], '.4f')} |"
        )


if __name__ == "__main__":
    main()
