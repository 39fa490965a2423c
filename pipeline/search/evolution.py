"""Evolutionary search of per-layer group sizes under a budget, resumable from its state.

Generation 0: the base plan and random feasible genomes, `population` in all. Each later
generation breeds `mutations` children (each gene of a top-k parent redrawn with probability
`mutation_prob`) and `crossovers` children (each gene from one of two top-k parents); the top k
are the best of everything evaluated in earlier generations. Children over budget are repaired
(genes moved to cheaper group sizes); children already seen are redrawn, so no genome is ever
evaluated twice.

Generation g draws from its own generator seeded with (seed, g), and uses only what earlier
generations evaluated, so a run that stops anywhere and resumes from its state makes exactly the
same choices as one that never stopped. Fitness is lower-is-better.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields

import numpy as np
from tqdm.auto import tqdm

from pipeline.options import BudgetMetric
from pipeline.search.space import Genome, SearchSpace


@dataclass
class EvolutionParams:
    """The algorithm's knobs, the reference's values as defaults. `of(source)` takes them from
    any object with these fields (the stages pass params.yaml's `search` section)."""

    population: int = 50
    top_k: int = 10
    mutations: int = 25
    mutation_prob: float = 0.1
    crossovers: int = 25
    generations: int = 10
    seed: int = 0

    @classmethod
    def of(cls, source, **extra):
        """The EvolutionParams fields of any object that has them (e.g. the search config)."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(EvolutionParams)}, **extra)


@dataclass
class Settings(EvolutionParams):
    budget: float = math.inf
    metric: str = BudgetMetric.BITOPS.value


class Evolution:
    def __init__(self, space: SearchSpace, settings: Settings, state: dict | None = None):
        self.space = space
        self.settings = settings
        state = state or {"evaluated": [], "generations_done": 0, "history": []}
        self.evaluated: list[dict] = [
            dict(e, genome=tuple(e["genome"]), fitness=float(e["fitness"])) for e in state["evaluated"]
        ]
        self.generations_done: int = state["generations_done"]
        self.history: list[dict] = list(state["history"])
        self._by_genome = {e["genome"]: e for e in self.evaluated}

    def state(self) -> dict:
        return {
            "evaluated": [dict(e, genome=list(e["genome"])) for e in self.evaluated],
            "generations_done": self.generations_done,
            "history": self.history,
        }

    @property
    def finished(self) -> bool:
        return self.generations_done > self.settings.generations

    def ranked(self, before: int | None = None) -> list[dict]:
        """Evaluated entries (of generations < before), best first; ties by evaluation order."""
        pool = [
            (e["fitness"], i, e) for i, e in enumerate(self.evaluated) if before is None or e["generation"] < before
        ]
        return [e for _, _, e in sorted(pool, key=lambda p: (p[0], p[1]))]

    def fitness_of(self, genome: Genome) -> float:
        entry = self._by_genome.get(tuple(genome))
        return entry["fitness"] if entry is not None else math.nan

    def best(self) -> dict:
        return self.ranked()[0]

    def _feasible(self, genome: Genome, rng: np.random.Generator) -> Genome:
        return self.space.repair(genome, self.settings.budget, self.settings.metric, rng)

    def candidates(self, generation: int) -> list[Genome]:
        """The genomes generation `generation` evaluates: a function of the seed and of the
        entries of earlier generations only."""
        rng = np.random.default_rng([self.settings.seed, generation])
        seen = {e["genome"] for e in self.evaluated if e["generation"] < generation}
        out: list[Genome] = []

        def draw(make: Callable[[], Genome], n: int) -> None:
            made = tries = 0
            while made < n and tries < 20 * n + 20:  # small spaces run out of new genomes
                tries += 1
                child = self._feasible(make(), rng)
                if child not in seen and child not in out:
                    out.append(child)
                    made += 1

        if generation == 0:
            out.append(self._feasible(self.space.base_genome, rng))
            draw(lambda: self.space.random(rng), self.settings.population - 1)
            return out
        top = [e["genome"] for e in self.ranked(before=generation)[: self.settings.top_k]]
        cands = [self.space.candidates[n] for n in self.space.genes]

        def mutate() -> Genome:
            parent = top[int(rng.integers(len(top)))]
            flips = rng.random(len(parent)) < self.settings.mutation_prob
            return tuple(int(rng.choice(c)) if f else g for g, f, c in zip(parent, flips, cands))

        def cross() -> Genome:
            i, j = rng.choice(len(top), 2, replace=len(top) < 2)
            take = rng.random(len(top[i])) < 0.5
            return tuple(a if t else b for a, b, t in zip(top[i], top[j], take))

        draw(mutate, self.settings.mutations)
        draw(cross, self.settings.crossovers)
        return out

    def run(
        self,
        fitness: Callable[[Genome], float],
        checkpoint: Callable[[dict], None] = lambda s: None,
        progress: bool = True,
    ) -> dict:
        """Evaluate generation after generation; `checkpoint(state)` after every evaluation and
        every generation. Returns the best entry."""
        while not self.finished:
            gen = self.generations_done
            genomes = self.candidates(gen)
            fresh = 0
            for genome in tqdm(
                genomes,
                desc=f"search gen {gen}/{self.settings.generations}",
                disable=not progress,
                mininterval=2.0,
                leave=False,
            ):
                if genome in self._by_genome:
                    continue  # evaluated before an interruption
                value = float(fitness(genome))
                cost = self.space.cost(genome)
                entry = {
                    "genome": genome,
                    "fitness": value if math.isfinite(value) else math.inf,
                    "generation": gen,
                    "size_mb": cost.size_mb,
                    "gbitops": cost.gbitops,
                }
                self.evaluated.append(entry)
                self._by_genome[genome] = entry
                fresh += 1
                checkpoint(self.state())
            this = [self._by_genome[g]["fitness"] for g in genomes]
            top = [e["fitness"] for e in self.ranked(before=gen + 1)[: self.settings.top_k]]
            self.history.append(
                {
                    "generation": gen,
                    "candidates": len(genomes),
                    "evaluated_now": fresh,
                    "best": top[0],
                    "topk_mean": float(np.mean(top)),
                    "generation_best": min(this) if this else math.inf,
                    "generation_mean": float(np.mean(this)) if this else math.inf,
                }
            )
            self.generations_done = gen + 1
            checkpoint(self.state())
            if progress:
                tqdm.write(
                    f"[search] generation {gen}: best {top[0]:.6g}, top-{len(top)} mean "
                    f"{np.mean(top):.6g}, {len(genomes)} candidates"
                )
        return self.best()


def settings_dict(s: Settings) -> dict:
    return {k: (None if isinstance(v, float) and math.isinf(v) else v) for k, v in asdict(s).items()}


def summary(
    space: SearchSpace, genome: Genome, evo: Evolution | None, *, fitness: str, budget: float, metric: str, unit: str
) -> dict:
    """What search.json records: the chosen plan's cost and group sizes beside the uniform
    plan's, and, when a search ran, its fitnesses and settings. No wall time: the same inputs
    give the same bytes."""
    cost, base_cost = space.cost(genome), space.cost(space.base_genome)
    out = {
        "searched": evo is not None,
        "fitness": fitness,
        "budget_metric": metric,
        "budget": budget,
        "budget_unit": unit,
        "layers": len(space),
        "plan": {"size_mb": cost.size_mb, "gbitops": cost.gbitops},
        "uniform": {
            "size_mb": base_cost.size_mb,
            "gbitops": base_cost.gbitops,
            "group_size": sorted(set(space.base_genome)),
        },
        "cheapest": space.cheapest(metric).value(metric),
        "group_sizes": dict(zip(space.genes, genome)),
    }
    if evo is not None:
        out |= {
            "fitness_best": evo.best()["fitness"],
            "fitness_uniform": evo.fitness_of(space.base_genome),  # nan when the budget excluded it
            "evaluated": len(evo.evaluated),
            "generations": evo.generations_done,
            "settings": settings_dict(evo.settings),
        }
    return out
