"""Stage `quantize`: the FP model quantized by the plan of data/search/plan.yaml -> data/quant/.

Writes plan.yaml, quantized.safetensors (uint8 codes, float16 scales, integer zero points) and
quant.json: model size as papers report it (codes at their bit width + scales and zero points;
everything else at 16 bits), weight SQNR, and the relative error of the denoiser output
against FP on the calibration records.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from pipeline.config import flat
from pipeline.errors import UserError, require_finite
from pipeline.io import atomic_dir, read_stats, write_json
from pipeline.models.loader import default_device, load_fp_model
from pipeline.quant.apply import linear_in_features, outputs, prepare, quantize
from pipeline.quant.checkpoint import quant_state, write_checkpoint
from pipeline.quant.cost import measure_shapes, model_size, plan_cost
from pipeline.quant.plan import QuantPlan
from pipeline.quant.quantizer import FP_BITS, sqnr_db
from pipeline.tracking import log_stage
from stages.calibration import calibration_batches
from stages.common import MODEL, QUANT, SEARCH, STATS, check_inputs, main, provenance


def read_plan(path, in_features: dict[str, int]) -> QuantPlan:
    if not path.is_file():
        raise UserError(f"{path} not found: run the `search` stage first (it writes the plan, searched or not)")
    try:
        plan = QuantPlan.read(path, written=True)
        plan.validate(in_features)
    except ValueError as e:  # PlanError
        raise UserError(f"quantization plan {path}: {e}") from None
    return plan


def run(cfg, args) -> None:
    check_inputs(SEARCH / "search.json", STATS / "index.json")
    fp = load_fp_model(MODEL)
    model = fp.transformer
    in_features = linear_in_features(model)
    plan = read_plan(SEARCH / "plan.yaml", in_features)
    start = time.time()
    device = default_device()
    model.to(device)
    batches = calibration_batches(fp, device, cfg.quant.gptq.batch_size)
    reference = outputs(model, batches, check=plan.layers)
    # input transforms first (exact in FP), so SQNR compares each weight with what it became
    prepared = prepare(model, plan, read_stats(STATS) if plan.needs_stats() else None)
    fp_weights = {n: model.get_submodule(n).weight.detach().float().cpu().clone() for n in plan.layers}
    quantize(model, plan, calibration=batches, prepared=prepared)
    quantized = outputs(model, batches)
    require_finite(
        quantized,
        torch.cat([b["timestep"].cpu() for b in batches]),
        "output",
        "of the quantized model on calibration inputs",
        "; the plan is too aggressive or the ranges are broken",
    )
    rel_err = float((quantized - reference).norm() / reference.norm()) if plan.layers else 0.0
    sqnr = [
        sqnr_db(fp_weights[n], model.get_submodule(n).effective_weight().cpu())
        for n, lp in plan.layers.items()
        if lp.weight_bits != FP_BITS
    ]
    size = model_size(model)
    gbitops = plan_cost(plan, measure_shapes(model, plan.layers, batches[0])).gbitops if plan.layers else 0.0
    seconds = time.time() - start
    summary = {
        "method": plan.method,
        "quantized_layers": len(plan.layers),
        "weight_bits": sorted({lp.weight_bits for lp in plan.layers.values()}),
        "act_bits": sorted({lp.act_bits for lp in plan.layers.values()}),
        "size_mb": size["size_mb"],
        "fp16_size_mb": size["fp16_size_mb"],
        "compression": size["fp16_size_mb"] / size["size_mb"],
        "gbitops": gbitops,  # of the quantized linears per image per denoiser forward (cost.py)
        "calib_rel_err": rel_err,
        "weight_sqnr_db_mean": float(np.mean(sqnr)) if sqnr else None,
        "weight_sqnr_db_min": float(np.min(sqnr)) if sqnr else None,
        "provenance": provenance(cfg, "quantize"),
    }
    with atomic_dir(QUANT) as tmp:
        write_checkpoint(tmp, plan, quant_state(model, plan))
        write_json(tmp / "quant.json", summary)
    print(
        f"[quantize] {plan.method}: {len(plan.layers)} layers, {size['size_mb']:.3f} MB "
        f"(FP16 {size['fp16_size_mb']:.3f} MB), relative output error {rel_err:.4f}"
    )
    metrics = {k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    log_stage(
        cfg,
        "quantize",
        flat(cfg, ["quant"]),
        metrics | {"seconds": seconds},
        [QUANT / "plan.yaml", QUANT / "quant.json"],
    )


def cli(argv: list[str] | None = None) -> None:
    main("quantize", run, argv=argv)


if __name__ == "__main__":
    cli()
