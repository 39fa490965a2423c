"""`python -m stages.report`: a sweep's DVC experiments as the paper's table and figures.

Not a DVC stage. Reads the experiments named `<sweep>-*` (`dvc exp show`; their artifacts
through dvc.api from DVC's cache) and writes, atomically, into --out (default
sweeps/<sweep>/report):
  report.md        the table (mean ± std over seeds, FP on top) and the figures below
  results.csv      one row per experiment: setting, seed, every metric
  fid_vs_bits.png  FID (to the reference) and FID to FP against the bit setting, per method
  group_sizes.png  the searched group size of every layer, per bit setting (first seed)
  activation_ranges.png  activation ranges across timesteps (first seed's statistics)
  samples.png      FP vs every setting, the same seeds in every cell
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from pipeline import plots
from pipeline.ablation import bits_label, method_label, parse_bits
from pipeline.errors import UserError
from pipeline.io import atomic_dir, read_json
from pipeline.report import COLUMNS, FP, Record, markdown_table, mean_std, paired_lead, record_from_params, rows
from stages.common import main
from stages.sweep import SWEEPS


def add_args(parser) -> None:
    parser.add_argument("--sweep", help="sweep name (default: sweep.name of params.yaml)")
    parser.add_argument("--out", type=Path, help="output folder (default: sweeps/<sweep>/report)")
    parser.add_argument("--grid", type=int, default=6, help="images per side of each sample cell")


def _baselines(prefix: str) -> list[str]:
    """The commits that hold experiments named prefix*, newest first. A sweep stays attached to
    the commit it ran on, so after a later commit `dvc exp show` alone no longer lists it."""
    listing = subprocess.run(["dvc", "exp", "list", "--all-commits"], capture_output=True, text=True).stdout
    revs: list[str] = []
    current = None
    for line in listing.splitlines():  # "<baseline>:" then "\t<sha> [<name>]" per experiment
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
        elif current and f"[{prefix}" in line and current not in revs:
            revs.append(current)

    def commit_time(rev: str) -> int:
        out = subprocess.run(["git", "log", "-1", "--format=%ct", rev], capture_output=True, text=True).stdout
        return int(out.strip() or 0)

    return sorted(revs, key=commit_time, reverse=True)


def _experiments(name: str) -> list[dict]:
    import dvc.api

    prefix = f"{name}-"
    baselines = _baselines(prefix)
    found, seen = [], set()
    for r in dvc.api.exp_show(revs=baselines) if baselines else []:
        exp = str(r.get("Experiment") or "")
        if exp.startswith(prefix) and exp not in seen:  # a name rerun on a newer commit wins
            seen.add(exp)
            found.append(r)
    done = [r for r in found if r.get("State") in (None, "Success")]
    if not done:
        raise UserError(
            f"no finished DVC experiments named {prefix}* ({len(found)} queued, running or "
            "failed); run `python -m stages.sweep` first, or pass --sweep <name>"
        )
    return done


def _read(path: str, rev: str, binary: bool = False):
    import dvc.api

    try:
        with dvc.api.open(path, rev=rev, mode="rb" if binary else "r") as f:
            return f.read()
    except Exception as e:
        raise UserError(
            f"{path} of experiment commit {rev}: cannot read it from DVC's cache ({e}); "
            "was the experiment garbage-collected (dvc gc)?"
        ) from None


def _images(path: str, rev: str, n: int) -> np.ndarray:
    with np.load(io.BytesIO(_read(path, rev, binary=True))) as z:
        return z["images"][:n]


def run(cfg, args) -> None:
    name = args.sweep or cfg.sweep.name
    out = args.out or SWEEPS / name / "report"
    exps = _experiments(name)
    records = [record_from_params(r["Experiment"], r, r) for r in exps]
    # params.yaml's order of bit settings (rows() appends any other the experiments have)
    table = rows(records, [bits_label(*parse_bits(b)) for b in list(cfg.sweep.bits) + list(cfg.sweep.ablation_bits)])
    bits_order = list(dict.fromkeys(row.bits for row in table if row.method != FP))
    first_seed = min(r.seed for r in records)
    # artifacts are read by the experiment's commit: a name can repeat across baselines
    revs = {r["Experiment"]: r["rev"] for r in exps}
    with atomic_dir(out) as tmp:
        _figures(tmp, records, revs, table, bits_order, first_seed, args.grid)
        _results_csv(tmp / "results.csv", records)
        (tmp / "report.md").write_text(_markdown(name, records, table))
    print(f"[report] {len(records)} experiments, {len(table)} rows -> {out}/report.md", file=sys.stderr)
    print(markdown_table(table))


def _figures(
    out: Path, records: list[Record], revs: dict[str, str], table, bits_order, first_seed: int, grid: int
) -> None:
    series = {key: {} for key in ("fid", "fid_fp")}
    for row in table:  # rows() orders the methods
        if row.method == FP:
            continue
        for key in series:
            if row.values.get(key):
                series[key].setdefault(row.label, {})[row.bits] = mean_std(row.values[key])
    fp_row = next((r for r in table if r.method == FP), None)
    fp = mean_std(fp_row.values["fid"]) if fp_row and fp_row.values.get("fid") else None
    plots.metric_vs_bits(
        series,
        bits_order,
        fp,
        out / "fid_vs_bits.png",
        [
            ("fid", "FID to the reference (lower is better)"),
            ("fid_fp", "FID to the FP samples, same seeds (lower is better)"),
        ],
    )
    first = [r for r in records if r.seed == first_seed]
    searched = {r.bits: r.name for r in first if r.method == "qdit"}
    if searched:
        plans = {}
        for bits in bits_order:
            if bits in searched:
                plan = yaml.safe_load(_read("data/search/plan.yaml", revs[searched[bits]]))
                plans[bits] = {
                    k: int(v["group_size"]) for k, v in plan["layers"].items() if v.get("granularity") == "group"
                }
        plots.group_sizes_by_setting(
            plans, out / "group_sizes.png", f"Searched group size per layer (seed {first_seed})"
        )
    (out / "activation_ranges.png").write_bytes(_read("data/stats/activation_ranges.png", revs[first[0].name], True))
    n = grid * grid
    panels: dict[str, dict[str, np.ndarray]] = {}
    for bits in bits_order:
        here = [r for r in first if r.bits == bits]
        if not here:
            continue
        panels[bits] = {"FP": _images("data/samples_fp/images.npz", revs[here[0].name], n)}
        for r in here:
            panels[bits][method_label(r.method)] = _images("data/samples/images.npz", revs[r.name], n)
    labels = [row.label for row in table if row.method != FP]
    columns = ["FP"] + [label for label in dict.fromkeys(labels) if any(label in p for p in panels.values())]
    plots.sample_panels(panels, columns, grid, out / "samples.png")


def _results_csv(path: Path, records: list[Record]) -> None:
    keys = sorted(
        {
            k
            for r in records
            for k, v in r.metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k in _METRIC_KEYS
        }
    )
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["experiment", "bits", "method", "seed"] + keys)
        for r in sorted(records, key=lambda r: (r.bits, r.method, r.seed)):
            w.writerow([r.name, r.bits, r.method, r.seed] + [r.metrics.get(k) for k in keys])


_METRIC_KEYS = {k for key, _, _ in COLUMNS for k in (key, f"{key}_fp_model")} | {
    "kid",
    "kid_fp_model",
    "ssim_fp",
    "fp16_size_mb",
    "num_images",
}


def _markdown(name: str, records: list[Record], table) -> str:
    seeds = sorted({r.seed for r in records})
    lines = [
        f"# Sweep `{name}`",
        "",
        f"{len(records)} DVC experiments, seeds {seeds} (mean ± sample std over seeds). FP: the "
        "model's own samples from the same seeds. FID/sFID/IS/precision/recall against the "
        "reference set; FID and PSNR to FP compare each image with the FP image from the same noise.",
    ]
    meta = SWEEPS / name / "sweep.json"
    if meta.is_file():
        m = read_json(meta, "sweep summary")
        lines.append(
            f"Sweep wall time: {m['seconds'] / 60:.1f} min with {m['jobs']} parallel experiment(s), "
            f"finished {m['finished']}."
        )
    lines += ["", markdown_table(table), ""]
    lead = paired_lead(records)
    if lead:
        head = "Each peer against our best configuration (lowest FID to FP) of no more size and GBOPs, by seed:"
        lines += [head, "", lead, ""]
    lines += [
        "![FID against bits](fid_vs_bits.png)",
        "",
        "![Group sizes](group_sizes.png)",
        "",
        "![Activation ranges](activation_ranges.png)",
        "",
        "![Samples](samples.png)",
        "",
    ]
    return "\n".join(lines)


def cli(argv: list[str] | None = None) -> None:
    main("report", run, add_args, argv=argv)


if __name__ == "__main__":
    cli()
