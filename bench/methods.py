"""Q-DiT against the peers on the embedded default, paired over sample seeds.

  python bench/methods.py --bits W4A8 W4A4 --num-images 500 --seeds 0 1 2 --out bench/results/methods.json

Uses data/model, data/calib and data/stats of a `dvc repro` run and params.yaml's sampler and
weight group size. Every setting is quantized once (no search: the uniform plan; the searched
plans are the sweep's), then sampled with every seed; FP samples of the same seed are the
fidelity reference, so differences between settings are paired per seed. Prints a Markdown
table and, per bit setting, each peer against our best setting of no more size and GBOPs
(`--report results.json` prints them again from a results file).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import generate, summary
from quant_matrix import calibration_batches
from safetensors.torch import load_file

from pipeline.ablation import parse_bits
from pipeline.config import load_params
from pipeline.metrics.features import build_extractor, extract
from pipeline.metrics.fid import frechet_distance
from pipeline.metrics.fidelity import psnr
from pipeline.models.loader import load_fp_model
from pipeline.quant.apply import linear_in_features, quantize
from pipeline.quant.cost import measure_shapes, model_size, plan_cost
from pipeline.quant.plan import build_plan
from pipeline.quant.targets import DEFAULT_INCLUDE

# label: (method, build_plan overrides)
SETTINGS = {
    "RTN": ("rtn", {}),
    "SmoothQuant": ("smoothquant", {}),
    "PTQ4DiT": ("ptq4dit", {}),
    "RepQ-ViT": ("repq", {}),
    "SVDQuant r32": ("svdquant", {}),
    # the peers with GPTQ in place of the block reconstruction their papers add
    "RTN + GPTQ": ("rtn", {"gptq": True}),
    "SmoothQuant + GPTQ": ("smoothquant", {"gptq": True}),
    "PTQ4DiT + GPTQ": ("ptq4dit", {"gptq": True}),
    "RepQ-ViT + GPTQ": ("repq", {"gptq": True}),
    "SVDQuant r32 + GPTQ": ("svdquant", {"gptq": True}),
    "Q-DiT": ("qdit", {}),
    "Q-DiT + GPTQ": ("qdit", {"gptq": True}),
    "Q-DiT + r32": ("qdit", {"lowrank_rank": 32}),
    "Q-DiT + GPTQ + r32": ("qdit", {"gptq": True, "lowrank_rank": 32}),
    # Q-DiT's dynamic activations at the per-channel peers' size and GBOPs: one weight group
    # and one activation group per row (segments = 1, as RTN's)
    "Q-DiT dyn. + GPTQ, per-channel": ("rtn", {"gptq": True, "act_mode": "dynamic"}),
}
OURS = [label for label in SETTINGS if label.startswith("Q-DiT")]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--bits", nargs="+", default=["W4A8", "W4A4"])
    p.add_argument("--num-images", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--only", nargs="*", help="labels of the settings to run (default: all)")
    p.add_argument("--out", default="bench/results/methods.json")
    p.add_argument("--device", default="cpu", help="where images are sampled (quantization runs on the CPU)")
    p.add_argument("--report", metavar="JSON", help="print the tables of an earlier run's results and exit")
    args = p.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text())["results"])
        return
    cfg = load_params(args.params)
    device = torch.device(args.device)
    fp = load_fp_model("data/model")
    stats = load_file("data/stats/stats.safetensors")
    extractor = build_extractor("digits", Path("data/model"))
    batches = calibration_batches(fp)
    fp.transformer.to(device)
    if fp.vae is not None:
        fp.vae.to(device)
    fp_images = {s: generate(fp.transformer, fp, cfg.sample, args.num_images, s) for s in args.seeds}
    fp_feats = {s: extract(extractor, fp_images[s], 500) for s in args.seeds}
    shapes = measure_shapes(fp.transformer.cpu(), linear_in_features(fp.transformer), batches[0])

    results: dict[str, dict] = {}
    for bits in args.bits:
        wb, ab = parse_bits(bits)
        results[bits] = {}
        for label, (method, extra) in SETTINGS.items():
            if args.only and label not in args.only:
                continue
            model = load_fp_model("data/model").transformer
            in_features = linear_in_features(model)
            kw = dict(
                method=method,
                include=DEFAULT_INCLUDE,
                exclude=[],
                weight_bits=wb,
                group_size=cfg.quant.weight.group_size,
                weight_symmetric=False,
                clip_search=True,
                gptq=False,
                act_bits=ab,
                act_mode="auto",
                act_group_size=None,
                act_symmetric=False,
                attn_bits=16,
                out_features={n: model.get_submodule(n).out_features for n in in_features},
            )
            plan = build_plan(in_features, **(kw | extra))
            quantize(model, plan, stats=stats, calibration=batches, progress=False)
            size_mb = model_size(model)["size_mb"]
            model.to(device)
            row = {"fid_fp": [], "psnr_fp": []}
            for seed in args.seeds:
                images = generate(model, fp, cfg.sample, args.num_images, seed)
                row["fid_fp"].append(frechet_distance(extract(extractor, images, 500), fp_feats[seed]))
                row["psnr_fp"].append(psnr(images, fp_images[seed]))
            cost = plan_cost(plan, shapes)
            results[bits][label] = {k: summary(v) for k, v in row.items()} | {
                "size_mb": size_mb,
                "gbitops": cost.gbitops,
            }
            r = results[bits][label]
            print(
                f"{bits} {label}: fid_fp {r['fid_fp']['mean']:.3f}  psnr_fp {r['psnr_fp']['mean']:.2f}  "
                f"size {r['size_mb']:.4f} MB  {r['gbitops']:.4f} GBOPs",
                flush=True,
            )

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "num_images": args.num_images,
        "seeds": args.seeds,
        "sampler": f"{cfg.sample.scheduler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance_scale}",
        "group_size": cfg.quant.weight.group_size,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    }
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    report(results)


def report(results: dict) -> None:
    """The Markdown table per bit setting, then each peer against our best setting (lowest FID
    to FP) of no more size and GBOPs, paired by seed."""
    fmt = lambda d, spec=".3f": f"{d['mean']:{spec}} ± {d['std']:.2g}"  # noqa: E731
    for bits, rows in results.items():
        print(
            f"\n{bits}\n\n| method | size MB | GBOPs | FID to FP ↓ | PSNR to FP (dB) ↑ |\n"
            "| --- | ---: | ---: | ---: | ---: |"
        )
        for label, r in rows.items():
            print(
                f"| {label} | {r['size_mb']:.4f} | {r['gbitops']:.4f} | {fmt(r['fid_fp'])} | "
                f"{fmt(r['psnr_fp'], '.2f')} |"
            )
        ours = [k for k in OURS if k in rows]
        print("\npaired by seed, each peer against our best setting of no more size and GBOPs:")
        for label, r in rows.items():
            if label in OURS:
                continue
            fits = [k for k in ours if rows[k]["size_mb"] <= r["size_mb"] and rows[k]["gbitops"] <= r["gbitops"]]
            if not fits:
                print(f"- {label}: none of ours within its size and GBOPs")
                continue
            best = min(fits, key=lambda k: rows[k]["fid_fp"]["mean"])
            d_fid = np.subtract(rows[best]["fid_fp"]["values"], r["fid_fp"]["values"])
            d_psnr = np.subtract(rows[best]["psnr_fp"]["values"], r["psnr_fp"]["values"])
            print(
                f"- {best} minus {label}: FID to FP {d_fid.mean():+.3f} ± {d_fid.std(ddof=1):.2g}, "
                f"PSNR {d_psnr.mean():+.2f} ± {d_psnr.std(ddof=1):.2g} dB"
            )


if __name__ == "__main__":
    main()
