"""Stage `calibrate`: (x_t, t, y) samples from the FP model's own trajectories, as shards.

Trajectory i has its own seed, random class label and noise, and contributes the model input
x_t at one step; steps are stratified so every sampler timestep is covered about equally.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.config import flat
from pipeline.io import atomic_dir, write_calibration_shards, write_json
from pipeline.lit.runner import IndexDataset, run_predict
from pipeline.lit.sampling import CalibrationModule, stratified_steps
from pipeline.models.loader import load_fp_model
from pipeline.sampling import make_scheduler
from pipeline.tracking import log_stage
from stages.common import CALIB, DATA, MODEL, main, provenance


def run(cfg, args) -> None:
    c = cfg.calibrate
    fp = load_fp_model(MODEL)
    record_step = stratified_steps(c.num_samples, c.steps, c.seed)
    module = CalibrationModule(
        fp, record_step=record_step, scheduler=c.scheduler, steps=c.steps, guidance_scale=c.guidance_scale, seed=c.seed
    )
    start = time.time()
    preds, _, is_main = run_predict(
        module, IndexDataset(c.num_samples), c.batch_size, cfg.trainer, DATA / ".parts-calibrate"
    )
    if not is_main:
        return
    seconds = time.time() - start
    records = {k: v.numpy() for k, v in preds.items() if k != "index"}
    timesteps = make_scheduler(c.scheduler, fp.scheduler_config, c.steps).timesteps.tolist()
    with atomic_dir(CALIB) as tmp:
        shards = write_calibration_shards(tmp, records, c.shard_size)
        write_json(
            tmp / "manifest.json",
            {
                "count": int(len(records["x"])),
                "x_shape": list(records["x"].shape[1:]),
                "seed": int(c.seed),
                "scheduler": c.scheduler,
                "steps": int(c.steps),
                "guidance_scale": float(c.guidance_scale),
                "null_label": fp.null_label,
                "timesteps": [int(t) for t in timesteps],
                "records_per_step": np.bincount(records["step"], minlength=c.steps).tolist(),
                "labels_histogram": np.bincount(records["y"], minlength=fp.num_classes).tolist(),
                "shards": shards,
                "provenance": provenance(cfg, "calibrate"),
            },
        )
    log_stage(
        cfg,
        "calibrate",
        flat(cfg, ["calibrate", "trainer"]),
        {"seconds": seconds, "records": len(records["x"]), "image_steps_per_s": c.num_samples * c.steps / seconds},
        [CALIB / "manifest.json"],
    )


def cli(argv: list[str] | None = None) -> None:
    main("calibrate", run, argv=argv)


if __name__ == "__main__":
    cli()
