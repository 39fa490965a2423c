"""The granularity search space: one gene per group-wise quantized layer, its group size.

A genome is a tuple of group sizes in gene order. A layer's candidates are the given group
sizes that divide its input size; the base plan's own group size must be one of them, so the
base (uniform) plan is a point of the space. A layer's activation groups follow its weight
group size when the base plan has them equal (Q-DiT's choice), otherwise they stay as the base
plan set them.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from pipeline.quant.cost import Cost, LayerShape, explicit_transform, layer_cost
from pipeline.quant.plan import QuantPlan
from pipeline.quant.quantizer import FP_BITS

Genome = tuple[int, ...]


class SearchSpace:
    def __init__(self, base: QuantPlan, shapes: dict[str, LayerShape], group_sizes: list[int]):
        self.base = base
        self.shapes = shapes
        self.genes = [n for n, lp in base.layers.items() if lp.granularity == "group" and lp.weight_bits != FP_BITS]
        self.candidates: dict[str, list[int]] = {}
        for name in self.genes:
            c = shapes[name].in_features
            own = base.layers[name].group_size
            allowed = sorted({g for g in group_sizes if g >= 1 and c % g == 0})
            if not allowed:
                divisors = [d for d in range(2, c + 1) if c % d == 0][:12]
                raise ValueError(
                    f"group sizes {list(group_sizes)}: none divides the input size {c} of "
                    f"layer {name}, so it has no candidate; divisors of {c}: "
                    f"{', '.join(map(str, divisors))}, ..."
                )
            if own not in allowed:
                raise ValueError(
                    f"layer {name}: the base plan's group size {own} is not among its candidates "
                    f"{allowed}; add {own} to the candidates (the base plan must be a point "
                    "of the search space)"
                )
            self.candidates[name] = allowed
        # per gene: candidate -> cost, and candidates ordered from dearest to cheapest
        self._costs = [
            {
                g: layer_cost(self.layer_plan(name, g), shapes[name], explicit_transform(base, shapes[name]))
                for g in self.candidates[name]
            }
            for name in self.genes
        ]
        self._fixed = Cost(0, 0)
        for name, lp in base.layers.items():
            if name not in self.candidates:
                self._fixed = self._fixed + layer_cost(lp, shapes[name], explicit_transform(base, shapes[name]))

    def __len__(self) -> int:
        return len(self.genes)

    def layer_plan(self, name: str, g: int):
        lp = self.base.layers[name]
        follows = lp.act_group_size is not None and lp.act_group_size == lp.group_size
        return replace(lp, group_size=g, act_group_size=g if follows else lp.act_group_size)

    @property
    def base_genome(self) -> Genome:
        return tuple(self.base.layers[n].group_size for n in self.genes)

    def plan(self, genome: Genome) -> QuantPlan:
        layers = dict(self.base.layers)
        for name, g in zip(self.genes, genome):
            layers[name] = self.layer_plan(name, g)
        return replace(self.base, layers=layers)

    def cost(self, genome: Genome) -> Cost:
        total = self._fixed
        for costs, g in zip(self._costs, genome):
            total = total + costs[g]
        return total

    def cheapest(self, metric: str) -> Cost:
        """The least cost any genome reaches in `metric` (costs add up layer by layer)."""
        total = self._fixed
        for costs in self._costs:
            total = total + min(costs.values(), key=lambda c: c.value(metric))
        return total

    def random(self, rng: np.random.Generator) -> Genome:
        return tuple(int(rng.choice(self.candidates[n])) for n in self.genes)

    def repair(self, genome: Genome, budget: float, metric: str, rng: np.random.Generator) -> Genome:
        """Over budget: move a random gene to its next cheaper candidate until it fits."""
        genome = list(genome)
        order = [sorted(c, key=lambda g: -c[g].value(metric)) for c in self._costs]  # dearest first
        while self.cost(tuple(genome)).value(metric) > budget:
            movable = [i for i, g in enumerate(genome) if order[i].index(g) < len(order[i]) - 1]
            if not movable:
                break  # cannot happen when cheapest() <= budget, which the caller checks
            i = int(rng.choice(movable))
            genome[i] = order[i][order[i].index(genome[i]) + 1]
        return tuple(genome)
