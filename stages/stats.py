"""Stage `stats`: per-timestep, per-channel activation ranges of every Linear input.

Writes data/stats/{stats.safetensors, index.json, *.png} and plots/act_range.csv (DVC plot).
The plots show how far each layer's input range moves across timesteps - the reason for
dynamic activation quantization.
"""

from __future__ import annotations

import csv
import time

import numpy as np
import torch

from pipeline import plots
from pipeline.config import flat
from pipeline.io import atomic_dir, atomic_file, write_json, write_safetensors
from pipeline.lit.runner import IndexDataset, run_predict
from pipeline.lit.stats import StatsModule
from pipeline.models.loader import load_fp_model
from pipeline.quant.targets import default_targets
from pipeline.tracking import log_stage
from stages.calibration import read_calibration_for
from stages.common import CALIB, DATA, MODEL, PLOTS, STATS, check_inputs, main, provenance


def run(cfg, args) -> None:
    s = cfg.stats
    fp = load_fp_model(MODEL)
    check_inputs(CALIB / "manifest.json")
    records, manifest = read_calibration_for(fp)
    timesteps = np.asarray(manifest["timesteps"])
    recs = {k: torch.from_numpy(v) for k, v in records.items()}
    module = StatsModule(fp, recs, num_slots=len(timesteps), guided=manifest["guidance_scale"] > 1.0)
    start = time.time()
    _, state, is_main = run_predict(
        module, IndexDataset(len(records["x"])), s.batch_size, cfg.trainer, DATA / ".parts-stats"
    )
    if not is_main:
        return
    seconds = time.time() - start
    rows_per_record = 2 if manifest["guidance_scale"] > 1.0 else 1
    state["count"] = torch.bincount(recs["step"], minlength=len(timesteps)) * rows_per_record
    state["timesteps"] = torch.as_tensor(timesteps)
    layers = sorted({k.rsplit("/", 1)[0] for k in state if "/" in k})
    quantized = default_targets(layers)
    seen = state["count"].numpy() > 0
    ts = timesteps[seen]
    tensor_range = {n: state[f"{n}/absmax"].numpy()[seen].max(1) for n in layers}
    # how much the per-tensor range moves over time: what a static range must cover
    spread = {n: float(r.max() / max(r.min(), 1e-12)) for n, r in tensor_range.items()}
    widest = max(quantized or layers, key=lambda n: spread[n])
    # q, k and v read the same input: plot it once, as to_q/k/v
    shown = {
        n.replace("attn1.to_q", "attn1.to_q/k/v"): tensor_range[n]
        for n in quantized
        if not n.endswith(("attn1.to_k", "attn1.to_v"))
    }
    with atomic_dir(STATS) as tmp:
        write_safetensors(tmp / "stats.safetensors", state)
        plots.activation_ranges(
            shown, ts, tmp / "activation_ranges.png", "Input range of the quantized linears across timesteps"
        )
        top = plots.top_channels(
            state[f"{widest}/absmax"].numpy()[seen], ts, widest, s.top_channels, tmp / "top_channels.png"
        )
        write_json(
            tmp / "index.json",
            {
                "layers": {
                    n: {
                        "in_features": int(state[f"{n}/min"].shape[1]),
                        "quantized_by_default": n in quantized,
                        "absmax_all": float(state[f"{n}/absmax_all"].max()),
                        "range_ratio_over_timesteps": spread[n],
                    }
                    for n in layers
                },
                "timesteps": [int(t) for t in timesteps],
                "count": state["count"].tolist(),
                "tensors": "stats.safetensors: '<layer>/{min,max,absmax}' [timestep, channel], "
                "'<layer>/{min,max,absmax}_all' [channel], 'count', 'timesteps'",
                "widest_layer": widest,
                "widest_layer_top_channels": top,
                "provenance": provenance(cfg, "stats"),
            },
        )
    PLOTS.mkdir(exist_ok=True)
    with atomic_file(PLOTS / "act_range.csv") as f:
        w = csv.writer(f)
        w.writerow(["timestep", *shown])
        for i, t in enumerate(ts):
            w.writerow([int(t), *[f"{r[i]:.6g}" for r in shown.values()]])
    log_stage(
        cfg,
        "stats",
        flat(cfg, ["stats", "trainer"]),
        {
            "seconds": seconds,
            "layers": len(layers),
            "max_range_ratio_over_timesteps": max(spread[n] for n in quantized or layers),
        },
        [STATS / "activation_ranges.png", STATS / "top_channels.png", STATS / "index.json"],
    )


def cli(argv: list[str] | None = None) -> None:
    main("stats", run, argv=argv)


if __name__ == "__main__":
    cli()
