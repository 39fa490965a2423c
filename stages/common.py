"""What every stage entry shares: artifact paths, argument parsing, clean failure."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from omegaconf import DictConfig  # noqa: E402

from pipeline.config import load_params  # noqa: E402
from pipeline.errors import UserError  # noqa: E402

DATA = Path("data")
MODEL = DATA / "model"
CALIB = DATA / "calib"
STATS = DATA / "stats"
SEARCH = DATA / "search"
QUANT = DATA / "quant"
SAMPLES = DATA / "samples"
SAMPLES_FP = DATA / "samples_fp"
METRICS = Path("metrics.json")
PLOTS = Path("plots")

_QUANT = [
    "quant.method",
    "quant.weight",
    "quant.act",
    "quant.attn_bits",
    "quant.include",
    "quant.exclude",
    "quant.plan",
    "quant.gptq",
]
# each stage's parameters, as dvc.yaml lists them (tests/stages/test_provenance.py compares), and its seeds
STAGE_PARAMS = {
    "model": ["model"],
    "calibrate": ["calibrate"],
    "stats": ["stats"],
    "search": ["search", *_QUANT, "evaluate"],
    "quantize": _QUANT,
    "sample_fp": ["sample"],
    "sample": ["sample", "quant.backend"],
    "evaluate": ["evaluate"],
}
STAGE_SEEDS = {
    "model": ["model.seed"],
    "calibrate": ["calibrate.seed"],
    "search": ["search.seed", "search.image_seed"],
    "sample_fp": ["sample.seed"],
    "sample": ["sample.seed"],
}


def provenance(cfg, stage: str) -> dict:
    """The provenance record of what `stage` writes now (pipeline/provenance.py)."""
    from omegaconf import OmegaConf

    from pipeline.provenance import model_fingerprint, record

    seeds = {k: OmegaConf.select(cfg, k) for k in STAGE_SEEDS.get(stage, [])}
    return record(cfg, stage, STAGE_PARAMS[stage], seeds, model_fingerprint(MODEL))


def check_inputs(*paths: Path) -> None:
    """Refuse an input JSON whose provenance names another model than data/model's."""
    import json

    from pipeline.provenance import require_same_model

    contents = {}
    for path in paths:
        try:
            contents[str(path)] = json.loads(Path(path).read_text()) if Path(path).is_file() else None
        except json.JSONDecodeError:
            contents[str(path)] = None  # its reader names the corruption
    require_same_model(contents, MODEL)


def read_calibration_for(fp) -> tuple[dict, dict]:
    """The calibration records, checked to fit the FP model they will run through."""
    from pipeline.io import read_calibration

    records, manifest = read_calibration(CALIB)
    if manifest["x_shape"] != list(fp.latent_shape):
        raise UserError(
            f"{CALIB}: calibration samples have shape {manifest['x_shape']}, the model in "
            f"{MODEL} expects {list(fp.latent_shape)}; rerun `calibrate` for this model"
        )
    return records, manifest


def calibration_batches(fp, device, batch_size: int) -> list[dict]:
    """The calibration records as model inputs (doubled for guidance when it was used)."""
    import torch

    from pipeline.sampling import guided_inputs

    records, manifest = read_calibration_for(fp)
    dtype = next(fp.transformer.parameters()).dtype
    x, t, y = (torch.from_numpy(records[k]) for k in ("x", "t", "y"))
    batches = []
    for i in range(0, len(x), batch_size):
        kw = guided_inputs(
            x[i : i + batch_size],
            t[i : i + batch_size],
            y[i : i + batch_size],
            manifest["guidance_scale"] > 1.0,
            fp.null_label,
        )
        batches.append({k: v.to(device, dtype if k == "hidden_states" else None) for k, v in kw.items()})
    return batches


def main(
    stage: str,
    body: Callable[[DictConfig, argparse.Namespace], None],
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> None:
    """Parse arguments, validate params.yaml, run the body; UserError -> message, exit 2."""
    parser = argparse.ArgumentParser(prog=f"python -m stages.{stage}")
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    start = time.time()
    try:
        cfg = load_params(args.params)
        body(cfg, args)
    except UserError as e:
        print(f"error [{stage}]: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"[{stage}] done in {time.time() - start:.1f} s", file=sys.stderr)
