"""Searched group sizes against uniform ones at the same budget, on the embedded default.

  python bench/search_vs_uniform.py --settings 4:8 4:4 --seeds 0 1 2 --out bench/results/search_vs_uniform.json
  python bench/search_vs_uniform.py --settings 4:4 --uniform 32 --set search.fitness=sample_mse \
      search.num_images=64 search.steps=10 --out bench/results/search_vs_uniform_sample_mse.json
  python bench/search_vs_uniform.py --settings 4:8 4:4 --uniform 32 --compare svdquant+gptq \
      --set quant.weight.gptq=true quant.lowrank.rank=32 quant.smooth.alpha=0.5 --out ...

Runs the real stages (search, quantize, sample, evaluate; sample_fp once per seed) in a scratch
copy of data/model, data/calib and data/stats from a `dvc repro`, with params.yaml plus
overrides, tracking off. For seed s the search uses search.seed = s and every plan is sampled
with sample.seed = s, so rows are paired. The budget is the uniform g = quant.weight.group_size
plan's bit-operations; uniform plans with larger g cost less (same budget), smaller g more (shown
for reference, over budget). `--compare` adds sweep methods (e.g. a peer, `svdquant+gptq`) as
more unsearched rows of the same seeds, each with its own quant.* settings and the searched plan's
paired difference to it. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from _common import deep_update, summary

REPO = Path(__file__).resolve().parents[1]


def stage(name: str, params: dict, *argv: str) -> None:
    import importlib

    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    importlib.import_module(f"stages.{name}").cli(list(argv))


def _machine() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()} (trainer.accelerator auto), {os.cpu_count()} CPU cores"
    return f"CPU, {os.cpu_count()} cores"


def _set_key(params: dict, key: str, value: str) -> None:
    """params[a][b][c] = value (parsed as YAML) for key 'a.b.c'."""
    *parents, leaf = key.split(".")
    for k in parents:
        params = params[k]
    params[leaf] = yaml.safe_load(value)


def _method_params(base: dict, method: str) -> dict:
    """params.yaml with a sweep method's quant.* and search settings in place of the bench's own."""
    from pipeline.ablation import Setting

    params = copy.deepcopy(base)
    params["quant"]["smooth"]["alpha"] = None
    params["quant"]["lowrank"]["rank"] = None
    params["quant"]["weight"]["gptq"] = False
    for key, value in Setting("W4A8", method, 0).overrides().items():
        if key.startswith(("quant.", "search.enabled")) and key not in ("quant.weight.bits", "quant.act.bits"):
            _set_key(params, key, value)
    return params


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--settings", nargs="+", default=["4:8", "4:4"], help="weight_bits:act_bits")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--uniform", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="params overrides for every run, e.g. search.fitness=sample_mse",
    )
    p.add_argument(
        "--compare", nargs="*", default=[], metavar="METHOD", help="sweep methods to pair with, e.g. svdquant+gptq"
    )
    p.add_argument("--out", default="bench/results/search_vs_uniform.json")
    p.add_argument(
        "--merge",
        nargs="*",
        default=[],
        metavar="JSON",
        help="join results files of other seeds, in order",
    )
    args = p.parse_args()
    if args.merge:
        return merge(args)
    base = yaml.safe_load((REPO / "params.yaml").read_text())
    for item in args.set:
        _set_key(base, *item.split("=", 1))
    base["tracking"]["enabled"] = False
    work = Path(tempfile.mkdtemp(prefix="qdit-search-bench-"))
    for d in ("model", "calib", "stats"):
        shutil.copytree(REPO / "data" / d, work / "data" / d)
    os.chdir(work)
    rows: dict[str, dict[str, list[float]]] = {}
    search_seconds: dict[str, list[float]] = {}
    costs: dict[str, float] = {}
    try:
        for seed in args.seeds:
            stage("sample", deep_update(base, {"sample": {"seed": seed}}), "--fp")
            for setting in args.settings:
                wb, ab = (int(x) for x in setting.split(":"))
                plans = (
                    [("searched", deep_update(base, {"search": {"seed": seed}}))]
                    + [
                        (
                            f"uniform g{g}",
                            deep_update(base, {"search": {"enabled": False}, "quant": {"weight": {"group_size": g}}}),
                        )
                        for g in args.uniform
                    ]
                    + [(method, _method_params(base, method)) for method in args.compare]
                )
                for label, plan_params in plans:
                    params = deep_update(
                        plan_params, {"quant": {"weight": {"bits": wb}, "act": {"bits": ab}}, "sample": {"seed": seed}}
                    )
                    start = time.time()
                    stage("search", params)
                    searched = json.loads(Path("data/search/search.json").read_text())
                    if label == "searched":
                        search_seconds.setdefault(setting, []).append(time.time() - start)
                        costs[f"W{wb}A{ab} budget"] = searched["budget"]
                    for s in ("quantize", "sample", "evaluate"):
                        stage(s, params)
                    m = json.loads(Path("metrics.json").read_text())
                    key = f"W{wb}A{ab} {label}"
                    costs[key] = searched["plan"]["gbitops"]
                    costs[f"{key} size_mb"] = searched["plan"]["size_mb"]
                    row = rows.setdefault(key, {"fid": [], "fid_fp": [], "psnr_fp": []})
                    for k in row:
                        row[k].append(float(m[k]))
                    print(
                        f"seed {seed} {key}: fid {m['fid']:.3f} fid_fp {m['fid_fp']:.4f} "
                        f"psnr_fp {m['psnr_fp']:.2f} ({searched['plan']['gbitops']:.4f} GBOPs)",
                        flush=True,
                    )
    finally:
        os.chdir(REPO)
        shutil.rmtree(work, ignore_errors=True)

    meta = {
        "seeds": args.seeds,
        "overrides": args.set,
        "compare": args.compare,
        "group_size": base["quant"]["weight"]["group_size"],
        "search": base["search"],
        "sample": base["sample"],
        "budget": costs,
        "search_seconds": {k: summary(v) for k, v in search_seconds.items()},
        "date": time.strftime("%Y-%m-%d"),
        "machine": _machine(),
    }
    write(rows, search_seconds, meta, args.out)


def merge(args) -> None:
    """One results file from several runs of the same settings over other seeds."""
    runs = [json.loads(Path(f).read_text()) for f in args.merge]
    rows: dict[str, dict[str, list[float]]] = {}
    seconds: dict[str, list[float]] = {}
    for run in runs:
        for key, r in run["results"].items():
            row = rows.setdefault(key, {})
            for m, v in r.items():
                if isinstance(v, dict):
                    row.setdefault(m, []).extend(v["values"])
        for key, v in run["meta"]["search_seconds"].items():
            seconds.setdefault(key, []).extend(v["values"])
    meta = dict(runs[0]["meta"])
    meta["seeds"] = [s for run in runs for s in run["meta"]["seeds"]]
    meta["budget"] = {k: v for run in runs for k, v in run["meta"]["budget"].items()}
    meta["merged_from"] = [Path(f).name for f in args.merge]
    meta["search_seconds"] = {k: summary(v) for k, v in seconds.items()}
    write(rows, seconds, meta, args.out)


def write(rows: dict, search_seconds: dict, meta: dict, path: str) -> None:
    costs = meta["budget"]
    results = {
        k: {m: summary(v) for m, v in r.items()} | {"gbitops": costs[k], "size_mb": costs.get(f"{k} size_mb")}
        for k, r in rows.items()
    }
    paired = {}
    for key, s in rows.items():
        setting, label = key.split(" ", 1)
        if label != "searched":
            continue
        u = rows.get(f"{setting} uniform g{meta['group_size']}")
        if u:
            paired[setting] = {m: summary(list(np.subtract(s[m], u[m]))) for m in s}
        for method in meta["compare"]:
            c = rows[f"{setting} {method}"]
            paired[f"{setting} vs {method}"] = {m: summary(list(np.subtract(s[m], c[m]))) for m in s}
    out = REPO / path
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results, "searched_minus_uniform": paired}, indent=2))

    fmt = lambda d, spec=".3f": f"{d['mean']:{spec}} ± {d['std']:.2g}"  # noqa: E731
    print("\n| setting | plan | MB | GBOPs | fid | fid_fp | psnr_fp (dB) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for key, r in results.items():
        setting, label = key.split(" ", 1)
        print(
            f"| {setting} | {label} | {r['size_mb'] or float('nan'):.3f} | {r['gbitops']:.4f} | {fmt(r['fid'])} | "
            f"{fmt(r['fid_fp'], '.4f')} | "
            f"{fmt(r['psnr_fp'], '.2f')} |"
        )
    print("\nsearched - uniform (paired by seed):")
    for setting, d in paired.items():
        print(f"  {setting}: " + ", ".join(f"{m} {fmt(v, '.4f')}" for m, v in d.items()))
    for setting, v in search_seconds.items():
        print(f"search wall time {setting}: {v}")


if __name__ == "__main__":
    main()
