"""`stages.sweep` queues the ablation as DVC experiments; `stages.report` turns them into a table."""

import csv
import json
import subprocess

import mlflow
import pytest

from tests.helpers import git_project, sh

SWEEP = {
    "sweep": {
        "name": "t",
        "bits": ["W4A8"],
        "methods": ["rtn", "qdit", "svdquant+gptq"],
        "ablation_bits": [],
        "seeds": [0, 1],
        "jobs": 2,
    }
}


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    proj, env = git_project(tmp_path_factory.mktemp("sweep"), SWEEP)
    out = sh("python -m stages.sweep --poll 2", proj, env)
    return proj, env, out


def test_sweep_runs_every_setting_as_a_dvc_experiment(swept):
    proj, env, out = swept
    summary = json.loads((proj / "sweeps/t/sweep.json").read_text())
    names = [f"t-w4a8-{m}-s{s}" for s in (0, 1) for m in ("rtn", "qdit", "svdquant_gptq")]
    assert sorted(summary["experiments"]) == sorted(names) and summary["failed"] == [] and summary["seconds"] > 0
    rows = {
        r["Experiment"]: r
        for r in json.loads(sh('python -c "import dvc.api, json; print(json.dumps(dvc.api.exp_show()))"', proj, env))
        if r.get("Experiment")
    }
    assert set(names) <= set(rows)
    for name in names:
        r = rows[name]
        assert r["State"] == "Success"
        assert r["quant.method"] == name.split("-")[2].split("_")[0]
        assert str(r["quant.weight.gptq"]).lower() == str("svdquant" in name).lower()  # exp show may say "False"
        assert r["sample.seed"] == (0 if name.endswith("s0") else 3)
        for key in ("fid", "sfid", "is", "kid", "precision", "recall", "fid_fp_model", "size_mb"):
            assert r[key] is not None and r[key] == r[key], (name, key)
        assert 0.0 <= r["precision"] <= 1.0 and 1.0 <= r["is"] <= 10.0
    # the FP model's samples depend on the seed only: both methods of a seed share them
    assert rows["t-w4a8-rtn-s0"]["fid_fp_model"] == rows["t-w4a8-qdit-s0"]["fid_fp_model"]
    assert rows["t-w4a8-rtn-s0"]["fid_fp_model"] != rows["t-w4a8-rtn-s1"]["fid_fp_model"]
    # the workspace keeps the baseline's params: the overrides live in the experiments only
    assert "sweep: null" in (proj / "params.yaml").read_text()


def test_sweep_stages_log_to_the_project_mlflow_db(swept):
    proj, _, _ = swept
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{proj / 'mlflow.db'}")
    exp = client.get_experiment_by_name("qdit")
    runs = client.search_runs([exp.experiment_id], "tags.`qdit.sweep` = 't' and tags.`qdit.stage` = 'evaluate'")
    logged = {r.data.tags["qdit.dvc_exp"] for r in runs}
    # t-w4a8-qdit-s0 repeats the baseline's settings (the sweep's `dvc repro`): DVC restores its
    # stages from the run cache, so they run - and log - only if its plan came out different
    peers = {"t-w4a8-svdquant_gptq-s0", "t-w4a8-svdquant_gptq-s1"}
    assert (
        {"t-w4a8-rtn-s0", "t-w4a8-rtn-s1", "t-w4a8-qdit-s1"} | peers
        <= logged
        <= {"t-w4a8-rtn-s0", "t-w4a8-qdit-s0", "t-w4a8-rtn-s1", "t-w4a8-qdit-s1"} | peers
    )
    assert all("sfid" in r.data.metrics and "precision" in r.data.metrics for r in runs)
    # the UI groups and sorts runs by method
    assert {r.data.tags["qdit.dvc_exp"]: r.data.tags["qdit.method"] for r in runs}["t-w4a8-svdquant_gptq-s1"] == (
        "svdquant+gptq"
    )


def test_sweep_refuses_a_bad_setting(tmp_path):
    proj, env = git_project(tmp_path, {"sweep": {"bits": ["W4A32"]}})
    proc = subprocess.run("python -m stages.sweep", cwd=proj, env=env, shell=True, capture_output=True, text=True)
    assert proc.returncode == 2
    assert "sweep.bits = 'W4A32' is not allowed; allowed: W<w>A<a> with w from 2 to 8" in proc.stderr
    assert not (proj / "sweeps").exists() and "Running stage" not in proc.stdout + proc.stderr


def test_sweep_restarts_workers_only_for_queued_experiments_and_free_slots():
    from stages.sweep import _idle_slots

    assert _idle_slots({"a": "Running", "b": "Queued", "c": "Queued"}, jobs=2) == 1
    assert _idle_slots({"a": "Success", "b": "Queued", "c": "Queued"}, jobs=2) == 2
    assert _idle_slots({"a": "Success", "b": "Queued"}, jobs=2) == 1  # never more than are queued
    assert _idle_slots({"a": "Running", "b": "Running", "c": "Queued"}, jobs=2) == 0
    assert _idle_slots({"a": "Running", "b": "Success"}, jobs=2) == 0  # nothing left to start


def test_report_writes_the_table_and_figures(swept):
    from PIL import Image

    proj, env, _ = swept
    # a commit after the sweep: its experiments stay attached to the commit they ran on
    sh("git commit -q --allow-empty -m later", proj, env)
    printed = sh("python -m stages.report --sweep t", proj, env)
    rep = proj / "sweeps/t/report"
    for name in ("fid_vs_bits.png", "group_sizes.png", "activation_ranges.png", "samples.png"):
        with Image.open(rep / name) as img:
            assert img.width > 200 and img.height > 100, name
    md = (rep / "report.md").read_text()
    lines = md.splitlines()
    assert any(line.startswith("| W16A16 | FP |") for line in lines)
    rtn = next(line for line in lines if line.startswith("| W4A8 | RTN |"))
    qdit = next(line for line in lines if line.startswith("| W4A8 | Q-DiT (+ search) |"))
    peer = next(line for line in lines if line.startswith("| W4A8 | SVDQuant + GPTQ |"))
    assert rtn.count("±") == qdit.count("±") == peer.count("±") == 9  # two seeds: a spread in every column
    assert "Sweep wall time:" in md and "![Samples](samples.png)" in md
    assert rtn in printed  # the table is also printed
    with open(rep / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 6 and {r["method"] for r in table} == {"rtn", "qdit", "svdquant+gptq"}
    assert all(float(r["precision"]) <= 1.0 for r in table)


def test_report_without_experiments_fails_clearly(swept):
    proj, env, _ = swept
    proc = subprocess.run(
        "python -m stages.report --sweep nope", cwd=proj, env=env, shell=True, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "no finished DVC experiments named nope-*" in proc.stderr
    assert not (proj / "sweeps/nope").exists()
