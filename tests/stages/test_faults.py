"""Fault injection: stages killed with SIGKILL, and a full disk while outputs are written.

Each stage runs as `python -m stages.<name>` in its own process, as `dvc repro` runs it, in a
copy of the built pipeline with the stage's outputs removed. It is killed (1) at a random
time (a seeded draw over its run, so some kills land while it imports and loads, some while
it computes) and (2) the moment its temporary output appears. After each kill the outputs
must be absent or complete and identical to an uninterrupted run's: never half-written.
Then a rerun must complete and write the uninterrupted run's bytes, and nothing the killed
runs left behind may remain.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO

# stage (argv), its outputs; every output the stage writes
STAGES = {
    "model": (["model"], ["data/model"]),
    "calibrate": (["calibrate"], ["data/calib"]),
    "stats": (["stats"], ["data/stats", "plots/act_range.csv"]),
    "search": (["search"], ["data/search", "plots/search_fitness.csv"]),
    "quantize": (["quantize"], ["data/quant"]),
    "sample_fp": (["sample", "--fp"], ["data/samples_fp"]),
    "sample": (["sample"], ["data/samples"]),
    "evaluate": (["evaluate"], ["metrics.json"]),
}
# written by a stage but not compared byte for byte: figures embed the matplotlib version
# only, but the search's checkpoint also records the time of each evaluation
UNCOMPARED = {"checkpoint.json"}
# what a killed stage may leave on purpose: the search's resume state (data/search is `persist`)
RESUME_STATE = {"search": {"checkpoint.json"}}


def _env() -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "HF_HUB_OFFLINE": "1",
    }


def _start(argv: list[str], cwd: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", f"stages.{argv[0]}", *argv[1:]],
        cwd=cwd,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kw,
    )


def _files(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        str(f.relative_to(path)): f.read_bytes()
        for f in sorted(path.rglob("*"))
        if f.is_file() and f.name not in UNCOMPARED
    }


def _leftovers(root: Path, outputs: list[str]) -> list[str]:
    return sorted(
        str(p.relative_to(root))
        for out in outputs
        for pattern in (".*.tmp-*", ".*.old-*")
        for p in (root / out).parent.glob(pattern)
        if p.name.startswith(f".{Path(out).name}.")
    )


def _remove(root: Path, outputs: list[str]) -> None:
    import shutil

    for out in outputs:
        path = root / out
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def _kill_at(proc: subprocess.Popen, seconds: float | None, watch: list[Path]) -> str:
    """SIGKILL proc after `seconds`, or (None) as soon as a temporary output appears. Returns
    what happened: killed, or finished (the stage was faster than the kill)."""
    start = time.monotonic()
    while proc.poll() is None:
        due = (
            time.monotonic() - start >= seconds
            if seconds is not None
            else any(any(d.glob(f".{name}.tmp-*")) for d, name in ((p.parent, p.name) for p in watch))
        )
        if due:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return "killed"
        time.sleep(0.002)
    return "finished"


@pytest.mark.parametrize("stage", list(STAGES))
def test_sigkill_leaves_no_partial_output_and_rerun_recovers(stage, pipeline_copy, built_pipeline):
    argv, outputs = STAGES[stage]
    reference = {out: _files(built_pipeline / out) for out in outputs}
    _remove(pipeline_copy, outputs)
    rng = random.Random(f"sigkill-{stage}")
    outcomes = []
    for when in (rng.uniform(1.0, 8.0), None):
        proc = _start(argv, pipeline_copy)
        outcomes.append(_kill_at(proc, when, [pipeline_copy / out for out in outputs]))
        for out in outputs:  # absent (or only the resume state), or complete and the uninterrupted run's
            path = pipeline_copy / out
            resume_only = path.is_dir() and {f.name for f in path.rglob("*") if f.is_file()} <= RESUME_STATE.get(
                stage, set()
            )
            assert not path.exists() or resume_only or _files(path) == reference[out], (stage, when, out)
    proc = _start(argv, pipeline_copy)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-2000:]
    for out in outputs:
        assert _files(pipeline_copy / out) == reference[out], (stage, out)
    assert _leftovers(pipeline_copy, outputs) == []
    print(f"{stage}: {outcomes}")  # shown with -s: which kills landed
    assert "killed" in outcomes, outcomes  # at least one kill landed inside the stage


def _limit_file_size(limit: int):
    def apply():
        # the process gets EFBIG from write() instead of being killed by SIGXFSZ
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.parametrize("stage", ["calibrate", "sample", "quantize"])
def test_full_disk_while_writing_is_one_clear_error_and_no_half_output(stage, pipeline_copy, built_pipeline):
    """The file-size limit (RLIMIT_FSIZE) stands in for a full disk: write() fails part-way
    through the output's largest file, as it does on ENOSPC. No tmpfs is needed (or allowed
    in most containers)."""
    argv, outputs = STAGES[stage]
    _remove(pipeline_copy, outputs)
    biggest = max(len(b) for out in outputs for b in _files(built_pipeline / out).values())
    proc = _start(argv, pipeline_copy, preexec_fn=_limit_file_size(biggest // 2))
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 2, log[-2000:]
    errors = [line for line in log.splitlines() if line.startswith("error [")]
    assert len(errors) == 1, log[-2000:]
    # the output itself, or the per-rank results the predict loop writes before it
    parts = f"data/.parts-{Path(outputs[0]).name}"
    assert any(f"error [{stage}]: could not write {where}: " in errors[0] for where in (outputs[0], parts)), errors
    assert "File too large" in errors[0] and "nothing was written" in errors[0]
    assert "Traceback" not in log
    for out in outputs:
        assert not (pipeline_copy / out).exists()
    assert _leftovers(pipeline_copy, outputs) == []
