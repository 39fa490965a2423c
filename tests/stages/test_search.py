"""The `search` stage on the embedded default: outputs, fitnesses, resume after SIGKILL, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from pipeline.quant.plan import QuantPlan
from tests.conftest import run_stage
from tests.helpers import FAST, REPO, write_params


def _json(path):
    return json.loads(path.read_text())


def test_search_outputs_and_quantize_uses_the_plan(built_pipeline):
    d = built_pipeline / "data/search"
    s = _json(d / "search.json")
    assert s["searched"] and s["fitness"] == "sample_mse" and s["budget_metric"] == "bitops"
    assert s["plan"]["gbitops"] <= s["budget"] == pytest.approx(s["uniform"]["gbitops"])
    assert s["fitness_best"] <= s["fitness_uniform"] and s["fitness_best"] > 0
    assert s["layers"] == 6 * FAST["model"]["tiny"]["num_layers"]
    plan = QuantPlan.read(d / "plan.yaml")
    assert {n: lp.group_size for n, lp in plan.layers.items()} == s["group_sizes"]
    assert set(s["group_sizes"].values()) <= {16, 32, 64, 128}
    assert QuantPlan.read(built_pipeline / "data/quant/plan.yaml") == plan
    state = _json(d / "checkpoint.json")
    assert len(state["evaluated"]) == s["evaluated"] and state["generations_done"] == FAST["search"]["generations"] + 1
    rows = (built_pipeline / "plots/search_fitness.csv").read_text().splitlines()
    assert rows[0] == "generation,best,topk_mean,generation_mean" and len(rows) == 1 + state["generations_done"]
    assert (d / "group_sizes.png").stat().st_size > 1000 and (d / "fitness.png").stat().st_size > 1000


@pytest.mark.parametrize("fitness", ["sample_mse", "fid_fp", "fid"])
def test_image_fitness_through_the_sampling_module(pipeline_copy, fitness):
    write_params(
        pipeline_copy,
        {"search": {"fitness": fitness, "population": 3, "mutations": 1, "crossovers": 1, "generations": 1}},
    )
    run_stage("search")
    state = _json(pipeline_copy / "data/search/checkpoint.json")
    values = [e["fitness"] for e in state["evaluated"]]
    assert len(values) >= 3 and all(0 < v < 1e4 for v in values)
    assert len(set(values)) == len(values)  # same seeds, different plans: different FIDs
    assert not (pipeline_copy / "data/.parts-search").exists()


def test_disabled_search_writes_the_uniform_plan(pipeline_copy):
    # g = 8 is not a search candidate: irrelevant when the search is off
    write_params(pipeline_copy, {"search": {"enabled": False}, "quant": {"weight": {"group_size": 8}}})
    run_stage("search")
    s = _json(pipeline_copy / "data/search/search.json")
    assert not s["searched"] and set(s["group_sizes"].values()) == {8}
    assert s["plan"] == {k: s["uniform"][k] for k in ("size_mb", "gbitops")}
    assert not (pipeline_copy / "data/search/checkpoint.json").exists()


def _search_process(cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MLFLOW_DISABLE_TELEMETRY": "true"}
    return subprocess.Popen(
        [sys.executable, "-m", "stages.search"],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_killed_search_resumes_to_the_same_plan(pipeline_copy, tmp_path):
    # fid_fp makes each evaluation take a while, so the kill lands mid-search
    slow = {"search": {"fitness": "fid_fp", "population": 6, "generations": 3, "num_images": 24, "steps": 6}}
    write_params(pipeline_copy, slow)
    run_stage("search")
    expected_plan = (pipeline_copy / "data/search/plan.yaml").read_text()
    expected = _json(pipeline_copy / "data/search/checkpoint.json")["evaluated"]

    import shutil

    shutil.rmtree(pipeline_copy / "data/search")
    proc = _search_process(pipeline_copy)
    checkpoint = pipeline_copy / "data/search/checkpoint.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if checkpoint.exists() and _json(checkpoint)["generations_done"] >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "search ended before it could be killed: " + proc.stdout.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = _json(checkpoint)
    assert 0 < len(killed["evaluated"]) < len(expected)
    assert not (pipeline_copy / "data/search/plan.yaml").exists()

    resumed = _search_process(pipeline_copy)
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-3000:]
    assert f"resuming from data/search/checkpoint.json: {len(killed['evaluated'])} plans evaluated" in out
    assert (pipeline_copy / "data/search/plan.yaml").read_text() == expected_plan
    assert _json(checkpoint)["evaluated"] == expected


def test_checkpoint_of_other_inputs_is_not_resumed(pipeline_copy, capsys):
    state = _json(pipeline_copy / "data/search/checkpoint.json")
    write_params(pipeline_copy, {"search": {"seed": 7}})
    run_stage("search")
    out = capsys.readouterr().out
    assert "holds the state of other inputs; starting afresh" in out
    assert _json(pipeline_copy / "data/search/checkpoint.json")["fingerprint"] != state["fingerprint"]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (
            {"search": {"group_sizes": [16, 64]}},
            "search.group_sizes = [16, 64] is not allowed; allowed: a list that includes quant.weight.group_size = 32",
        ),
        ({"search": {"budget": 0.01}}, "search.budget = 0.01 GBOPs per image-forward cannot be met: the cheapest plan"),
        ({"search": {"budget_metric": "size", "budget": 0.001}}, "search.budget = 0.001 MB cannot be met"),
        (
            {"search": {"fitness": "fdi"}},
            "search.fitness = 'fdi' is not allowed; allowed: mse, sample_mse, fid_fp, fid",
        ),
        ({"search": {"populaton": 5}}, "unknown key 'search.populaton' (did you mean 'population'?)"),
        ({"search": {"mutation_prob": 1.5}}, "search.mutation_prob = 1.5 is not allowed; allowed: 0 <= value <= 1"),
    ],
)
def test_bad_search_input_is_refused_and_nothing_is_written(pipeline_copy, capsys, extra, fragment):
    import shutil

    shutil.rmtree(pipeline_copy / "data/search")
    (pipeline_copy / "plots/search_fitness.csv").unlink()
    write_params(pipeline_copy, extra)
    with pytest.raises(SystemExit) as exit_:
        run_stage("search")
    assert exit_.value.code == 2
    assert fragment in capsys.readouterr().err
    assert not (pipeline_copy / "data/search").exists() and not (pipeline_copy / "plots/search_fitness.csv").exists()


def test_quantize_without_a_plan_says_to_run_search(pipeline_copy, capsys):
    import shutil

    shutil.rmtree(pipeline_copy / "data/search")
    with pytest.raises(SystemExit):
        run_stage("quantize")
    assert "data/search/plan.yaml not found: run the `search` stage first" in capsys.readouterr().err


def test_size_budget_is_met_in_bytes(pipeline_copy):
    write_params(pipeline_copy, {"search": {"budget_metric": "size"}})
    run_stage("search")
    s = _json(pipeline_copy / "data/search/search.json")
    assert s["budget_metric"] == "size" and s["budget_unit"] == "MB"
    assert s["plan"]["size_mb"] <= s["budget"] == pytest.approx(s["uniform"]["size_mb"])
    plan = yaml.safe_load((pipeline_copy / "data/search/plan.yaml").read_text())
    assert len(plan["layers"]) == s["layers"]


def test_same_inputs_give_byte_identical_search_outputs(pipeline_copy, built_pipeline):
    import shutil

    shutil.rmtree(pipeline_copy / "data/search")
    run_stage("search")
    for name in ("plan.yaml", "search.json", "checkpoint.json"):
        assert (pipeline_copy / "data/search" / name).read_bytes() == (
            built_pipeline / "data/search" / name
        ).read_bytes(), name
