"""Stage `search`: the per-layer group sizes of the plan, by evolutionary search -> data/search/.

The base plan is what `quant.*` (or the plan file `quant.plan`) asks for; its group-wise layers
are the genes. The search keeps every plan within `search.budget` (default: the base plan's
cost) in bit-operations or bytes, and ranks plans by `search.fitness`. Writes plan.yaml (read by
`quantize`), search.json (fitness and cost of the searched and the base plan), checkpoint.json
(every evaluated plan), group_sizes.png, fitness.png and plots/search_fitness.csv.

checkpoint.json is rewritten after every evaluation; DVC keeps data/search in place between runs
(`persist`), so a killed search resumes where it stopped when rerun with the same inputs.
With `search.enabled: false` (or no group-wise layer) the base plan is written unchanged.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import shutil
import time

from pipeline import plots
from pipeline.config import flat, section
from pipeline.errors import UserError
from pipeline.io import atomic_dir, atomic_file, read_json, read_stats, write_json
from pipeline.models.loader import default_device, load_fp_model
from pipeline.quant.apply import act_ranges, linear_in_features, measure_shapes
from pipeline.quant.plan import plan_from_params
from pipeline.search.evolution import Evolution, Settings, settings_dict
from pipeline.search.space import SearchSpace
from pipeline.tracking import log_stage
from stages.common import CALIB, DATA, MODEL, PLOTS, SEARCH, STATS, calibration_batches, check_inputs, main, provenance

CHECKPOINT = SEARCH / "checkpoint.json"
FITNESS_CSV = PLOTS / "search_fitness.csv"


def base_plan(cfg, in_features):
    try:
        return plan_from_params(cfg.quant, in_features)
    except (ValueError, TypeError) as e:
        where = f" {cfg.quant.plan}" if cfg.quant.plan else ""
        raise UserError(f"quantization plan{where}: {e}") from None


def fingerprint(cfg) -> str:
    """What the fitness of a plan depends on; a checkpoint of other inputs is not resumed."""
    parts = {name: section(cfg, name) for name in ("search", "quant", "evaluate")}
    parts["precision"] = cfg.trainer.precision
    parts["model"] = (MODEL / "model.json").read_text()
    parts["calibration"] = (CALIB / "manifest.json").read_text()
    if cfg.quant.plan:
        parts["plan_file"] = open(cfg.quant.plan).read()
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def resume_state(key: str) -> dict | None:
    """The checkpoint of an earlier run with the same inputs, if any; stale state is removed."""
    if not SEARCH.exists():
        return None
    state = None
    if CHECKPOINT.is_file():
        try:
            state = read_json(CHECKPOINT, "search checkpoint")
        except UserError as e:
            print(f"[search] {e}; starting afresh")
    if state is not None and state.get("fingerprint") == key:
        done = len(state["evaluated"])
        print(
            f"[search] resuming from {CHECKPOINT}: {done} plans evaluated, {state['generations_done']} generations done"
        )
        return state
    print(f"[search] {SEARCH} holds the state of other inputs; starting afresh")
    shutil.rmtree(SEARCH)
    return None


def make_fitness(cfg, fp, model, batches, device):
    """genome-independent part of the fitness; called with the candidate model."""
    sc = cfg.search
    from pipeline.search import fitness as F

    if sc.fitness == "mse":
        return F.MSEFitness(model, batches)
    sampler = F.Sampler(
        fp,
        num_images=sc.num_images,
        steps=sc.steps,
        scheduler=sc.scheduler,
        guidance_scale=sc.guidance_scale,
        seed=sc.image_seed,
        batch_size=sc.batch_size,
        trainer_cfg=cfg.trainer,
        parts_dir=DATA / ".parts-search",
    )
    if sc.fitness == "sample_mse":
        return F.SampleMSEFitness(sampler)
    from pipeline.metrics.features import build_extractor, extract, resolve_kind
    from pipeline.metrics.reference import load_reference

    e = cfg.evaluate
    kind = resolve_kind(e.features, read_json(MODEL / "model.json", "FP model description"))
    extractor = build_extractor(kind, MODEL, e.inception_weights)
    target = None
    if sc.fitness == "fid":
        reference = load_reference(e.reference, _image_shape(fp))
        target = (
            reference.pool_stats
            if reference.pool_stats is not None
            else extract(extractor, reference.images, e.batch_size, device, "features: reference")
        )
    return F.ImageFitness(sampler, extractor=extractor, device=device, feature_batch_size=e.batch_size, target=target)


def _image_shape(fp) -> tuple[int, ...]:
    """[H, W, C] of the images the sampler makes: one zero latent decoded."""
    import torch

    from pipeline.sampling import decode, to_uint8

    with torch.no_grad():
        latent = torch.zeros(1, *fp.latent_shape)
        if fp.vae is not None:
            latent = latent.to(next(fp.vae.parameters()).device)
        return tuple(to_uint8(decode(latent, fp.vae)).shape[1:])


def run(cfg, args) -> None:
    sc = cfg.search
    start = time.time()
    check_inputs(CALIB / "manifest.json", STATS / "index.json")
    fp = load_fp_model(MODEL)
    model = fp.transformer
    base = base_plan(cfg, linear_in_features(model))
    device = default_device()
    model.to(device)
    batches = calibration_batches(fp, device, cfg.quant.gptq.batch_size)
    shapes = measure_shapes(model, base.layers, batches[0])
    # disabled: the base plan's own group sizes are the only candidates, so its costs are reported
    own = sorted({lp.group_size for lp in base.layers.values() if lp.group_size})
    try:
        space = SearchSpace(base, shapes, list(sc.group_sizes) if sc.enabled else own)
    except ValueError as e:
        raise UserError(str(e)) from None
    metric = sc.budget_metric
    unit = {"bitops": "GBOPs per image-forward", "size": "MB"}[metric]
    base_cost = space.cost(space.base_genome)
    budget = float(sc.budget) if sc.budget is not None else base_cost.value(metric)
    cheapest = space.cheapest(metric).value(metric)
    if sc.enabled and space.genes and cheapest > budget:
        raise UserError(
            f"search.budget = {budget:.6g} {unit} cannot be met: the cheapest plan (every layer at "
            f"its cheapest group size) costs {cheapest:.6g}; allowed: a budget >= {cheapest:.6g}, "
            f"or null for the uniform plan's {base_cost.value(metric):.6g}"
        )
    searching = sc.enabled and bool(space.genes)
    if not searching:
        why = "search.enabled is false" if not sc.enabled else "the plan has no group-wise quantized layer"
        print(f"[search] {why}: the base plan is used as it is")
        plan, genome, evo, base_fitness = base, space.base_genome, None, None
    else:
        key = fingerprint(cfg)
        state = resume_state(key)
        from pipeline.search.fitness import CandidateModel

        ranges = None
        if base.needs_ranges():
            ranges = act_ranges(read_stats(STATS), base)
        fitness = make_fitness(cfg, fp, model, batches, device)  # FP references, before quantizing
        is_main = _is_main()  # known once Lightning has set up the processes
        candidates = CandidateModel(model, space, ranges, progress=is_main)
        settings = Settings.of(sc, budget=budget, metric=metric)
        evo = Evolution(space, settings, state)

        def checkpoint(st: dict) -> None:
            if is_main:
                write_json(CHECKPOINT, {"fingerprint": key, **st})

        if is_main:
            print(
                f"[search] {len(space)} layers, candidates {sorted({g for c in space.candidates.values() for g in c})}"
                f", budget {budget:.6g} {unit}, fitness {sc.fitness}"
            )
        best = evo.run(lambda genome: fitness(candidates.use(genome)), checkpoint, progress=is_main)
        if not is_main:
            return
        genome = best["genome"]
        plan = space.plan(genome)
        base_fitness = evo.fitness_of(space.base_genome)  # nan when the budget excluded it
    seconds = time.time() - start
    chosen = dict(zip(space.genes, genome))
    cost = space.cost(genome)
    summary = {
        "searched": searching,
        "fitness": sc.fitness,
        "budget_metric": metric,
        "budget": budget,
        "budget_unit": unit,
        "layers": len(space),
        "plan": {"size_mb": cost.size_mb, "gbitops": cost.gbitops},
        "uniform": {
            "size_mb": base_cost.size_mb,
            "gbitops": base_cost.gbitops,
            "group_size": sorted({g for g in space.base_genome}),
        },
        "cheapest": cheapest,
        "group_sizes": chosen,  # no wall time: the same inputs give the same bytes
        "provenance": provenance(cfg, "search"),
    }
    if evo is not None:
        summary |= {
            "fitness_best": evo.best()["fitness"],
            "fitness_uniform": base_fitness,
            "evaluated": len(evo.evaluated),
            "generations": evo.generations_done,
            "settings": settings_dict(evo.s),
        }
    with atomic_dir(SEARCH) as tmp:
        (tmp / "plan.yaml").write_text(plan.to_yaml())
        write_json(tmp / "search.json", summary)
        if evo is not None:
            write_json(tmp / "checkpoint.json", {"fingerprint": key, **evo.state()})
            plots.search_progress(evo.history, base_fitness, sc.fitness, tmp / "fitness.png")
        if chosen:
            plots.group_sizes(
                chosen, tmp / "group_sizes.png", f"group size per layer ({'searched' if searching else 'uniform'})"
            )
    with atomic_file(FITNESS_CSV) as f:
        w = csv.writer(f)
        w.writerow(["generation", "best", "topk_mean", "generation_mean"])
        for h in evo.history if evo is not None else []:
            w.writerow([h["generation"], h["best"], h["topk_mean"], h["generation_mean"]])
    if evo is not None:
        print(
            f"[search] best {sc.fitness} {summary['fitness_best']:.6g} vs uniform {base_fitness:.6g}; "
            f"cost {cost.value(metric):.6g} of budget {budget:.6g} {unit}; {len(evo.evaluated)} plans evaluated"
        )
    metrics = {"size_mb": cost.size_mb, "gbitops": cost.gbitops, "budget": budget, "seconds": seconds}
    series = None
    if evo is not None:
        metrics["evaluated"] = len(evo.evaluated)  # fitness_best: the last step of its series
        if math.isfinite(base_fitness):
            metrics["fitness_uniform"] = base_fitness
        series = {
            "fitness_best": [h["best"] for h in evo.history],
            "fitness_topk_mean": [h["topk_mean"] for h in evo.history],
        }
    artifacts = [
        SEARCH / n for n in ("plan.yaml", "search.json", "group_sizes.png", "fitness.png") if (SEARCH / n).exists()
    ]
    log_stage(cfg, "search", flat(cfg, ["search", "quant"]), metrics, artifacts, series=series)


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def cli(argv: list[str] | None = None) -> None:
    main("search", run, argv=argv)


if __name__ == "__main__":
    cli()
