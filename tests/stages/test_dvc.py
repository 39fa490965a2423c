"""`dvc repro` and `dvc exp run` on a copy of the project with fast parameters."""

from tests.helpers import git_project
from tests.helpers import sh as _sh


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_repro_noop_and_experiment_rerun_only_what_changed(tmp_path):
    proj, env = git_project(tmp_path)

    first = _sh("dvc repro", proj, env)
    assert _ran(first) == {"model", "calibrate", "stats", "search", "quantize", "sample_fp", "sample", "evaluate"}
    assert (proj / "data/search/plan.yaml").is_file() and (proj / "plots/search_fitness.csv").is_file()
    assert (proj / "metrics.json").is_file() and (proj / "dvc.lock").is_file()

    again = _sh("dvc repro", proj, env)
    assert _ran(again) == set() and "up to date" in again

    _sh("git add -A && git commit -qm repro", proj, env)
    exp = _sh("dvc exp run -S sample.num_images=12", proj, env)
    assert _ran(exp) == {"sample_fp", "sample", "evaluate"}
    shown = _sh("dvc metrics show --json", proj, env)
    assert '"num_images": 12' in shown
    exp = _sh("dvc exp run -S quant.weight.bits=8 -S quant.act.bits=8", proj, env)
    assert _ran(exp) == {"search", "quantize", "sample", "evaluate"}
    assert "fid" in _sh("dvc exp show --no-pager --csv", proj, env)
