"""The real stages on 1 and on N devices: the same artifacts? how much faster? what memory?

  python bench/ddp_scaling.py --devices 1 2 --images 2048 --steps 10 --out bench/results/gpu_ddp_scaling.json
  python bench/ddp_scaling.py --model tiny --accelerator cpu --devices 1 2 ...   # the CPU form (gloo)

A scratch project per device count; in each, every stage runs, from `model` to `evaluate`, as
`python -m stages.<name>` in its own process (as `dvc repro` runs it), and the artifacts of each
N-device project are compared with the 1-device project's: the FP model, calibration records,
statistics, every search fitness and the plan, the quantized checkpoint, FP and quantized
samples, metrics (`compare` in the results file). Nothing is copied from one project to another.

--model xl (default): params = params.yaml + presets/paper-256.yaml + the overrides below
(tracking off). A DiT-XL/2-config transformer and an SD-VAE-config decoder with random weights
(bench/_common.save_xl_pipeline): the real compute, no download. Calibration at the paper's size
(256 trajectories of DDIM 50 steps, guidance 1.5); a small sample_mse search (8 plans,
candidates 128/288); --images at --steps, guidance 1.5; evaluation with Inception-v3 of random
weights (torch-fidelity) against the first project's FP samples, or no evaluation without it.
--model tiny: the embedded digits DiT, trained in each project, with params.yaml's values and
the same small search; digit features against the digits. `--set key=value` overrides either.

From each stage's log: the wall time ("[stage] done in"), and per rank the predict loop's time
and peak GPU memory ("[predict] rank r: ..."). Scaling = 1-device loop time / N-device loop time
(slowest rank); wall-time ratios include process start, model loading and the DDP launch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from _common import deep_update, save_xl_pipeline

REPO = Path(__file__).resolve().parents[1]
PREDICT = re.compile(r"\[predict\] rank (\d+): (\d+) items in ([\d.]+) s(?:, peak GPU memory ([\d.]+) GiB)?")
DONE = re.compile(r"\[(\w+)\] done in ([\d.]+) s")


def random_inception_weights(path: Path) -> Path | None:
    """A weights file of the FID Inception's layout, random values (none can be downloaded)."""
    try:
        from torch_fidelity import feature_extractor_inceptionv3 as fe
    except ImportError:
        return None
    import torch

    load_url, load_state = fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict
    fe.load_state_dict_from_url = lambda *a, **k: None
    fe.FeatureExtractorInceptionV3.load_state_dict = lambda self, *a, **k: None
    try:
        torch.manual_seed(0)
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    finally:
        fe.load_state_dict_from_url, fe.FeatureExtractorInceptionV3.load_state_dict = load_url, load_state
    torch.save(net.state_dict(), path)
    return path


def run_stage(proj: Path, name: str, *argv: str, timeout: int = 900) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "PYTHONUNBUFFERED": "1",
        "PYTHONFAULTHANDLER": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", f"stages.{name}", *argv],
        cwd=proj,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    log = proc.stdout + proc.stderr
    (proj / f"{name}{''.join(argv)}.log").write_text(log)
    if proc.returncode != 0:  # recorded, and the other stages still run
        print(f"  {name} {' '.join(argv)}: FAILED, exit status {proc.returncode}:\n{log[-3000:]}", flush=True)
        return {"failed": proc.returncode, "wall_s": round(time.time() - start, 1)}
    ranks = [
        {"rank": int(r), "items": int(n), "loop_s": float(s), "peak_gib": float(m) if m else None}
        for r, n, s, m in PREDICT.findall(log)
    ]
    done = DONE.findall(log)
    out = {"wall_s": round(time.time() - start, 1), "stage_s": float(done[-1][1]) if done else None, "ranks": ranks}
    if ranks:
        out["loop_s"] = max(r["loop_s"] for r in ranks[-len({r["rank"] for r in ranks}) :])
        out["peak_gib"] = max((r["peak_gib"] or 0) for r in ranks)
    print(f"  {name} {' '.join(argv)}: {json.dumps(out)}", flush=True)
    return out


def _images(path: Path) -> np.ndarray:
    return np.load(path / "images.npz")["images"].astype(np.int16)


def compare(one: Path, two: Path) -> dict:
    """How far the N-device artifacts (in `two`) are from the 1-device ones (in `one`)."""
    from safetensors.torch import load_file

    from pipeline.io import read_calibration
    from pipeline.provenance import tree_sha256

    out: dict = {"model_identical": tree_sha256(one / "data/model") == tree_sha256(two / "data/model")}
    r1, _ = read_calibration(one / "data/calib")
    r2, _ = read_calibration(two / "data/calib")
    out["calib_same_t_y_step"] = all(np.array_equal(r1[k], r2[k]) for k in ("t", "y", "step", "trajectory"))
    out["calib_x_max_abs_diff"] = float(np.abs(r1["x"] - r2["x"]).max())
    out["calib_x_identical"] = bool(np.array_equal(r1["x"], r2["x"]))
    s1, s2 = (load_file(str(p / "data/stats/stats.safetensors")) for p in (one, two))
    out["stats_max_rel_diff"] = max(
        float(((s1[k].double() - s2[k].double()).abs() / s1[k].double().abs().clamp_min(1e-6)).max())
        for k in s1
        if s1[k].is_floating_point()
    )
    out |= compare_search(one, two)
    out["quant_identical"] = all(
        (one / "data/quant" / f).read_bytes() == (two / "data/quant" / f).read_bytes()
        for f in ("plan.yaml", "quantized.safetensors")
    )
    for name in ("samples_fp", "samples"):
        a, b = _images(one / f"data/{name}"), _images(two / f"data/{name}")
        diff = np.abs(a - b)
        out[f"{name}_identical_images"] = f"{int((diff.reshape(len(a), -1).max(1) == 0).sum())} of {len(a)}"
        out[f"{name}_max_abs_diff"] = int(diff.max())
        out[f"{name}_pixels_differing"] = float((diff > 0).mean())
    if (one / "metrics.json").exists() and (two / "metrics.json").exists():
        m1, m2 = json.loads((one / "metrics.json").read_text()), json.loads((two / "metrics.json").read_text())
        keys = [k for k in m1 if isinstance(m1[k], float) and isinstance(m2.get(k), float) and math.isfinite(m1[k])]
        out["metrics_compared"] = keys
        out["metrics_max_abs_diff"] = max(abs(m1[k] - m2[k]) for k in keys)
        out["metrics_max_rel_diff"] = max(abs(m1[k] - m2[k]) / max(abs(m1[k]), 1e-12) for k in keys)
    return out


def compare_search(one: Path, two: Path) -> dict:
    out = {}
    e1 = json.loads((one / "data/search/checkpoint.json").read_text())["evaluated"]
    e2 = {
        tuple(e["genome"]): e["fitness"]
        for e in json.loads((two / "data/search/checkpoint.json").read_text())["evaluated"]
    }
    common = [(e["fitness"], e2[tuple(e["genome"])]) for e in e1 if tuple(e["genome"]) in e2]
    out["search_plans_in_both"] = f"{len(common)} of {len(e1)}"
    out["search_fitness_max_rel_diff"] = max(abs(a - b) / abs(a) for a, b in common) if common else None
    out["search_same_best_plan"] = (
        json.loads((one / "data/search/search.json").read_text())["plan"]
        == json.loads((two / "data/search/search.json").read_text())["plan"]
    )
    return out


def _set(params: dict, item: str) -> dict:
    key, _, value = item.partition("=")
    tree: object = yaml.safe_load(value)
    for part in reversed(key.split(".")):
        tree = {part: tree}
    return deep_update(params, tree)


def project_params(args, work: Path) -> tuple[dict, bool]:
    """The parameters every project shares, and whether `evaluate` can run."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    search = {
        "group_sizes": [128, 288] if args.model == "xl" else [32, 64],  # the base g and a cheaper one
        "fitness": "sample_mse",
        "num_images": args.search_images,
        "steps": 10,
        "population": 4,
        "top_k": 2,
        "mutations": 2,
        "crossovers": 2,
        "generations": 1,
        "batch_size": 64,
    }
    common = {
        "calibrate": {"num_samples": args.calib_samples, "steps": args.calib_steps},
        "search": search,
        "sample": {"num_images": args.images, "steps": args.steps},
        "tracking": {"enabled": False},
        "trainer": {
            "accelerator": args.accelerator,
            "precision": "bf16-true" if args.accelerator == "gpu" else "32-true",
        },
    }
    evaluate = True
    if args.model == "xl":
        t0 = time.time()
        save_xl_pipeline(work / "DiT-XL-2-256")
        weights = random_inception_weights(work / "inception.pth")
        inception = "random weights" if weights else "not installed: no evaluate"
        print(f"model directory written in {time.time() - t0:.0f} s; Inception: {inception}")
        params = deep_update(params, yaml.safe_load((REPO / "presets/paper-256.yaml").read_text()))
        common |= {
            "model": {"source": str(work / "DiT-XL-2-256")},
            "quant": {"weight": {"clip_search": False}},  # not what is measured here; saves minutes
            "evaluate": {"reference": str(work / "reference.npz"), "inception_weights": str(weights)},
        }
        evaluate = weights is not None
    params = deep_update(params, common)
    for item in args.set:
        params = _set(params, item)
    return params, evaluate


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=["xl", "tiny"], default="xl")
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--calib-samples", type=int, default=256)
    p.add_argument("--calib-steps", type=int, default=50)
    p.add_argument("--search-images", type=int, default=64, help="sample_mse images per plan (10 steps)")
    p.add_argument("--accelerator", default="gpu", help="gpu, or cpu (gloo DDP, 32-true)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml override")
    p.add_argument("--work", default="/tmp/qdit-ddp")
    p.add_argument("--out", default="bench/results/gpu_ddp_scaling.json")
    args = p.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    params, evaluate = project_params(args, work)
    result: dict = {"args": vars(args), "runs": {}, "compare": {}}
    first: Path | None = None
    for n in args.devices:
        proj = work / f"devices{n}"
        (proj / "data").mkdir(parents=True)
        strategy = "ddp" if n > 1 else "auto"
        trainer = {"trainer": {"devices": n, "strategy": strategy}}
        (proj / "params.yaml").write_text(yaml.safe_dump(deep_update(params, trainer)))
        print(f"devices {n}:", flush=True)
        runs: dict = {}
        for stage in ("model", "calibrate", "stats", "search", "quantize", "sample_fp", "sample"):
            runs[stage] = run_stage(proj, "sample", "--fp") if stage == "sample_fp" else run_stage(proj, stage)
        if evaluate:
            if first is None and args.model == "xl":  # the reference batch: the first project's FP images
                np.savez(work / "reference.npz", arr_0=np.load(proj / "data/samples_fp/images.npz")["images"])
            runs["evaluate"] = run_stage(proj, "evaluate")
        result["runs"][n] = runs
        if first is None:
            first = proj
        else:
            try:
                result["compare"][n] = compare(first, proj)
            except Exception as e:  # a failed stage left something out: keep the timings
                result["compare"][n] = {"error": repr(e)}
            base = result["runs"][args.devices[0]]
            result["compare"][n]["loop_speedup"] = {
                k: round(base[k]["loop_s"] / v["loop_s"], 3)
                for k, v in runs.items()
                if "loop_s" in v and "loop_s" in base.get(k, {})
            }
            result["compare"][n]["wall_speedup"] = {
                k: round(base[k]["wall_s"] / v["wall_s"], 3) for k, v in runs.items() if k in base and "failed" not in v
            }
            print(json.dumps(result["compare"][n], indent=1), flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))  # after each device count: partial results survive
    import torch

    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    result["torch"] = torch.__version__
    Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
