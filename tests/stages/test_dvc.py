"""`dvc repro` and `dvc exp run` on a copy of the project with fast parameters."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO, write_params


def _sh(cmd, cwd, env):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900, shell=True)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_repro_noop_and_experiment_rerun_only_what_changed(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    for item in ("pipeline", "stages", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, proj / item, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        elif src.exists():
            (proj / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, proj / item)
    write_params(proj)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "PYTHONPATH": str(proj), "MLFLOW_DISABLE_TELEMETRY": "true",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    _sh("git init -q && git add -A && git commit -qm init", proj, env)

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
