"""Stage `search`: the per-layer group sizes of the plan, by evolutionary search -> data/search/.

The base plan is what `quant.*` (or the plan file `quant.plan`) asks for; its group-wise layers
are the genes. Every plan stays within `search.budget` (default: the base plan's cost) in
bit-operations or bytes; plans are ranked by `search.fitness`. Writes plan.yaml (read by
`quantize`), search.json, checkpoint.json (every evaluated plan), group_sizes.png, fitness.png
and plots/search_fitness.csv. DVC keeps data/search in place between runs (`persist`), so a
killed search resumes from checkpoint.json when rerun with the same inputs.
"""

from __future__ import annotations

import csv
import math
import time

from pipeline import plots
from pipeline.config import flat, section
from pipeline.errors import UserError
from pipeline.io import atomic_dir, atomic_file, read_stats, write_json
from pipeline.lit.runner import is_main
from pipeline.models.loader import default_device, load_fp_model
from pipeline.quant.cost import measure_shapes
from pipeline.search.checkpoint import Checkpoint, fingerprint
from pipeline.search.evolution import Evolution, Settings, summary
from pipeline.search.fitness import CandidateModel, make_fitness
from pipeline.search.space import SearchSpace
from pipeline.tracking import log_stage
from stages.calibration import calibration_batches
from stages.common import CALIB, DATA, MODEL, PLOTS, SEARCH, STATS, check_inputs, main, provenance
from stages.plan import plan_from_params

UNITS = {"bitops": "GBOPs per image-forward", "size": "MB"}


def search(cfg, fp, space: SearchSpace, batches, device, budget: float) -> tuple[Evolution | None, Checkpoint]:
    """Run (or resume) the evolution; no Evolution on processes other than the main one."""
    sc, e = cfg.search, cfg.evaluate
    inputs = {name: section(cfg, name) for name in ("search", "quant", "evaluate")}
    inputs |= {
        "precision": cfg.trainer.precision,
        "model": (MODEL / "model.json").read_text(),
        "calibration": (CALIB / "manifest.json").read_text(),
    }
    if cfg.quant.plan:
        inputs["plan_file"] = open(cfg.quant.plan).read()
    checkpoint = Checkpoint(SEARCH / "checkpoint.json", fingerprint(inputs))
    state = checkpoint.resume()
    stats = read_stats(STATS) if space.base.needs_stats() else None
    fitness = make_fitness(
        sc.fitness,
        fp,
        fp.transformer,
        batches,
        device,
        trainer_cfg=cfg.trainer,
        parts_dir=DATA / ".parts-search",
        images=dict(
            num_images=sc.num_images,
            steps=sc.steps,
            scheduler=sc.scheduler,
            guidance_scale=sc.guidance_scale,
            seed=sc.image_seed,
            batch_size=sc.batch_size,
        ),
        features=e.features,
        model_dir=MODEL,
        inception_weights=e.inception_weights,
        reference=e.reference,
        feature_batch_size=e.batch_size,
    )
    main_process = is_main()  # known once Lightning has set up the processes
    candidates = CandidateModel(fp.transformer, space, stats, progress=main_process, calibration=batches)
    evo = Evolution(space, Settings.of(sc, budget=budget, metric=sc.budget_metric), state)
    if main_process:
        sizes = sorted({g for c in space.candidates.values() for g in c})
        print(
            f"[search] {len(space)} layers, candidates {sizes}, budget {budget:.6g} {UNITS[sc.budget_metric]}, "
            f"fitness {sc.fitness}"
        )
    evo.run(
        lambda genome: fitness(candidates.use(genome)),
        checkpoint.save if main_process else lambda s: None,
        progress=main_process,
    )
    return (evo if main_process else None), checkpoint


def run(cfg, args) -> None:
    sc, metric = cfg.search, cfg.search.budget_metric
    start = time.time()
    check_inputs(CALIB / "manifest.json", STATS / "index.json")
    fp = load_fp_model(MODEL)
    base = plan_from_params(cfg.quant, fp.transformer)
    device = default_device()
    fp.transformer.to(device)
    batches = calibration_batches(fp, device, cfg.quant.gptq.batch_size)
    # disabled: the base plan's own group sizes are the only candidates, so its costs are reported
    own = sorted({lp.group_size for lp in base.layers.values() if lp.group_size})
    try:
        space = SearchSpace(
            base, measure_shapes(fp.transformer, base.layers, batches[0]), list(sc.group_sizes) if sc.enabled else own
        )
    except ValueError as e:
        raise UserError(f"search.group_sizes: {e}") from None
    uniform = space.cost(space.base_genome).value(metric)
    budget = float(sc.budget) if sc.budget is not None else uniform
    cheapest = space.cheapest(metric).value(metric)
    if sc.enabled and space.genes and cheapest > budget:
        raise UserError(
            f"search.budget = {budget:.6g} {UNITS[metric]} cannot be met: the cheapest plan (every layer "
            f"at its cheapest group size) costs {cheapest:.6g}; allowed: a budget >= {cheapest:.6g}, "
            f"or null for the uniform plan's {uniform:.6g}"
        )
    evo = None
    if sc.enabled and space.genes:
        evo, checkpoint = search(cfg, fp, space, batches, device, budget)
        if evo is None:
            return
    else:
        why = "search.enabled is false" if not sc.enabled else "the plan has no group-wise quantized layer"
        print(f"[search] {why}: the base plan is used as it is")
    genome = evo.best()["genome"] if evo is not None else space.base_genome
    result = summary(space, genome, evo, fitness=sc.fitness, budget=budget, metric=metric, unit=UNITS[metric])
    result["provenance"] = provenance(cfg, "search")
    plan = space.plan(genome)
    with atomic_dir(SEARCH) as tmp:
        (tmp / "plan.yaml").write_text(plan.to_yaml())
        write_json(tmp / "search.json", result)
        if evo is not None:
            checkpoint.save(evo.state(), tmp / "checkpoint.json")
            plots.search_progress(evo.history, result["fitness_uniform"], sc.fitness, tmp / "fitness.png")
        if result["group_sizes"]:
            plots.group_sizes(
                result["group_sizes"],
                tmp / "group_sizes.png",
                f"group size per layer ({'searched' if evo is not None else 'uniform'})",
            )
    history = evo.history if evo is not None else []
    with atomic_file(PLOTS / "search_fitness.csv") as f:
        w = csv.writer(f)
        w.writerow(["generation", "best", "topk_mean", "generation_mean"])
        w.writerows([h["generation"], h["best"], h["topk_mean"], h["generation_mean"]] for h in history)
    metrics = {
        "size_mb": result["plan"]["size_mb"],
        "gbitops": result["plan"]["gbitops"],
        "budget": budget,
        "seconds": time.time() - start,
    }
    series = None
    if evo is not None:
        print(
            f"[search] best {sc.fitness} {result['fitness_best']:.6g} vs uniform {result['fitness_uniform']:.6g}; "
            f"{len(evo.evaluated)} plans evaluated"
        )
        metrics["evaluated"] = len(evo.evaluated)  # fitness_best: the last step of its series
        if math.isfinite(result["fitness_uniform"]):
            metrics["fitness_uniform"] = result["fitness_uniform"]
        series = {"fitness_best": [h["best"] for h in history], "fitness_topk_mean": [h["topk_mean"] for h in history]}
    artifacts = [
        SEARCH / n for n in ("plan.yaml", "search.json", "group_sizes.png", "fitness.png") if (SEARCH / n).exists()
    ]
    log_stage(cfg, "search", flat(cfg, ["search", "quant"]), metrics, artifacts, series=series)


def cli(argv: list[str] | None = None) -> None:
    main("search", run, argv=argv)


if __name__ == "__main__":
    cli()
