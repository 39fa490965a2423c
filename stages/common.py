"""What every stage entry shares: artifact paths, argument parsing, clean failure."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from pipeline.config import Params, load_params, select  # noqa: E402
from pipeline.errors import UserError  # noqa: E402
from pipeline.quant.errors import QuantError  # noqa: E402

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
    "quant.weight_only",
    "quant.plan",
    "quant.smooth",
    "quant.lowrank",
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
    from pipeline.provenance import model_fingerprint, record

    seeds = {k: select(cfg, k) for k in STAGE_SEEDS.get(stage, [])}
    return record(cfg, stage, stage_module(stage), STAGE_PARAMS[stage], seeds, model_fingerprint(MODEL))


def stage_module(stage: str) -> str:
    """The module a stage's command runs (dvc.yaml: `python -m <module>`)."""
    return "stages.sample" if stage == "sample_fp" else f"stages.{stage}"


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


def user_message(e: Exception) -> str:
    """A refusal of the quantization library, in params.yaml's words."""
    from pipeline.quant.errors import BackendError, MissingRanges, StateError

    if isinstance(e, BackendError):
        return f"quant.backend = {e.backend!r}: {e.args[0]}"
    if isinstance(e, MissingRanges):
        return f"{e}; rerun the `stats` stage"
    if isinstance(e, StateError):
        return f"{e}; rerun the `quantize` stage"
    return str(e)


def main(
    stage: str,
    body: Callable[[Params, argparse.Namespace], None],
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
    except QuantError as e:
        print(f"error [{stage}]: {user_message(e)}", file=sys.stderr)
        sys.exit(2)
    print(f"[{stage}] done in {time.time() - start:.1f} s", file=sys.stderr)
