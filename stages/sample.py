"""Stages `sample` and `sample_fp` (`--fp`): generate sample.num_images images.

Image i always gets the same noise and label, so `sample` (the quantized model of
data/quant) and `sample_fp` (the FP model, cached by DVC) are compared image by image.
"""

from __future__ import annotations

import time

from pipeline import plots
from pipeline.config import flat
from pipeline.io import atomic_dir, write_images, write_json
from pipeline.lit.runner import IndexDataset, run_predict
from pipeline.lit.sampling import SamplingModule
from pipeline.models.loader import load_fp_model
from pipeline.quant.backends import use_backend
from pipeline.quant.checkpoint import load_quantized, read_checkpoint
from pipeline.quant.plan import describe
from pipeline.tracking import log_stage
from stages.common import DATA, MODEL, QUANT, SAMPLES, SAMPLES_FP, check_inputs, main, provenance


def add_args(parser) -> None:
    parser.add_argument("--fp", action="store_true", help="sample the FP model into data/samples_fp")


def run(cfg, args) -> None:
    s = cfg.sample
    out = SAMPLES_FP if args.fp else SAMPLES
    fp = load_fp_model(MODEL)
    described = "fp"
    if not args.fp:
        check_inputs(QUANT / "quant.json")
        plan, state = read_checkpoint(QUANT)
        load_quantized(fp.transformer, plan, state, str(QUANT))
        use_backend(fp.transformer, cfg.quant.backend)
        described = describe(plan)
    module = SamplingModule(
        fp, scheduler=s.scheduler, steps=s.steps, guidance_scale=s.guidance_scale, seed=s.seed, compile=s.compile
    )
    start = time.time()
    preds, _, is_main = run_predict(
        module, IndexDataset(s.num_images), s.batch_size, cfg.trainer, DATA / f".parts-{out.name}"
    )
    if not is_main:
        return
    seconds = time.time() - start
    images = preds["images"].numpy()
    with atomic_dir(out) as tmp:
        write_images(tmp / "images.npz", images, preds["labels"].numpy(), preds["seeds"].numpy())
        plots.image_grid(images, s.grid_size, tmp / "grid.png")
        write_json(
            tmp / "info.json",
            {
                "model": described,
                "num_images": int(len(images)),
                "image_shape": list(images.shape[1:]),
                "scheduler": s.scheduler,
                "steps": int(s.steps),
                "guidance_scale": float(s.guidance_scale),
                "seed": int(s.seed),
                "compile": str(s.compile),
                "labels": "index mod num_classes",
                "provenance": provenance(cfg, "sample_fp" if args.fp else "sample"),
            }
            | ({} if args.fp else {"backend": cfg.quant.backend}),
        )
    name = "sample_fp" if args.fp else "sample"
    log_stage(
        cfg,
        name,
        flat(cfg, ["sample", "trainer"] + ([] if args.fp else ["quant"])),
        {"seconds": seconds, "image_steps_per_s": s.num_images * s.steps / seconds},
        [out / "grid.png", out / "info.json"],
    )


def cli(argv: list[str] | None = None) -> None:
    main("sample", run, add_args, argv=argv)


if __name__ == "__main__":
    cli()
