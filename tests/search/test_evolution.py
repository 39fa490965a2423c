import math

import numpy as np
import pytest

from pipeline.search.evolution import Evolution, Settings
from tests.search.test_space import _space


def _toy_fitness(genome):
    # smaller groups help, most on the first layer: the budget forces a trade
    weights = (5.0, 1.0, 0.2)
    return sum(w * np.log2(g) for w, g in zip(weights, genome))


def _settings(**kw):
    space = _space()
    base = dict(
        population=8,
        top_k=3,
        mutations=5,
        mutation_prob=0.3,
        crossovers=5,
        generations=6,
        seed=0,
        budget=space.cost(space.base_genome).value("bitops"),
        metric="bitops",
    )
    return space, Settings(**(base | kw))


def test_search_beats_the_uniform_plan_within_budget_and_never_repeats_a_genome():
    space, s = _settings()
    evo = Evolution(space, s)
    best = evo.run(_toy_fitness, progress=False)
    genomes = [e["genome"] for e in evo.evaluated]
    assert len(genomes) == len(set(genomes))
    assert genomes[0] == space.base_genome
    assert all(space.cost(g).value("bitops") <= s.budget for g in genomes)
    assert best["fitness"] < _toy_fitness(space.base_genome)
    assert best["genome"][0] == 16  # the budget goes to the layer that matters
    assert [h["generation"] for h in evo.history] == list(range(s.generations + 1))
    assert all(a["best"] >= b["best"] for a, b in zip(evo.history, evo.history[1:]))
    assert len([e for e in evo.evaluated if e["generation"] == 0]) == s.population


def test_same_seed_same_search_other_seed_other_path():
    space, s = _settings()
    one = Evolution(space, s)
    one.run(_toy_fitness, progress=False)
    two = Evolution(space, s)
    two.run(_toy_fitness, progress=False)
    assert one.evaluated == two.evaluated
    three = Evolution(space, Settings(**{**s.__dict__, "seed": 1}))
    three.run(_toy_fitness, progress=False)
    assert [e["genome"] for e in three.evaluated] != [e["genome"] for e in one.evaluated]


class _Killed(Exception):
    pass


@pytest.mark.parametrize("kill_at", [0.05, 0.3, 0.5, 0.8, 0.99])
def test_resumed_search_makes_the_same_choices_as_an_uninterrupted_one(kill_at):
    space, s = _settings()
    full = Evolution(space, s)
    full.run(_toy_fitness, progress=False)
    kill_after = max(1, int(kill_at * len(full.evaluated)))

    saved = {}
    calls = {"n": 0}

    def dying(genome):
        if calls["n"] == kill_after:
            raise _Killed
        calls["n"] += 1
        return _toy_fitness(genome)

    with pytest.raises(_Killed):
        Evolution(space, s).run(dying, checkpoint=lambda st: saved.update(state=st), progress=False)
    state = saved["state"]
    assert len(state["evaluated"]) == kill_after
    resumed_calls = []
    resumed = Evolution(space, s, state)
    best = resumed.run(lambda g: resumed_calls.append(g) or _toy_fitness(g), progress=False)
    assert resumed.evaluated == full.evaluated
    assert best == full.best()
    assert len(resumed_calls) == len(full.evaluated) - kill_after  # nothing evaluated twice


def test_state_survives_json_with_infinite_fitness(tmp_path):
    from pipeline.io import read_json, write_json

    space, s = _settings(generations=1)
    evo = Evolution(space, s)
    evo.run(lambda g: math.inf if g[0] == 16 else _toy_fitness(g), progress=False)
    write_json(tmp_path / "state.json", evo.state())
    again = Evolution(space, s, read_json(tmp_path / "state.json", "state"))
    assert again.evaluated == evo.evaluated and again.finished


def test_a_budget_below_the_uniform_plan_repairs_it():
    space, s = _settings(budget=_space().cheapest("bitops").value("bitops"))
    evo = Evolution(space, s)
    evo.run(_toy_fitness, progress=False)
    assert {e["genome"] for e in evo.evaluated} == {(128, 32, 128)}  # the only feasible point
    assert math.isnan(evo.fitness_of(space.base_genome))
