"""`python -m stages.sweep`: the paper's ablation and bit settings as queued DVC experiments.

Not a DVC stage: a command over the pipeline. It reads the `sweep` section of params.yaml,
reproduces the workspace pipeline once (so the stages every setting shares - model,
calibration and statistics of seed 0, the FP samples - are in DVC's cache and are restored,
not rerun), queues one `dvc exp run` per (bit setting, method, seed) with its `-S` overrides,
runs the queue with `sweep.jobs` workers and waits. Each experiment's stages log to the
project's MLflow db (tag qdit.sweep = sweep.name). `python -m stages.report` reads the results.
Rerunning replaces the experiments of the same name. Writes sweeps/<name>/sweep.json.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.ablation import settings
from pipeline.errors import UserError
from pipeline.io import write_json
from pipeline.tracking import absolute_uri, tracking_uri
from stages.common import main

SWEEPS = Path("sweeps")
DONE = {"Success", "Failed"}  # DVC's final experiment states


def add_args(parser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the experiments and exit")
    parser.add_argument(
        "--no-repro", action="store_true", help="skip the workspace `dvc repro` (the shared stages must be cached)"
    )
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between queue checks")


def _dvc(*args: str, env=None, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["dvc", *args], capture_output=True, text=True, env=env)
    if check and proc.returncode != 0:
        raise UserError(f"`dvc {' '.join(args)}` failed:\n{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def _states(names: set[str]) -> dict[str, str]:
    """Experiment name -> DVC's state (Queued, Running, Success, Failed) for ours."""
    import dvc.api

    rows = dvc.api.exp_show()
    return {r["Experiment"]: (r.get("State") or "Success") for r in rows if r.get("Experiment") in names}


def _idle_slots(states: dict[str, str], jobs: int) -> int:
    """Workers to start: job slots left free while experiments wait in the queue."""
    queued = sum(v == "Queued" for v in states.values())
    running = sum(v == "Running" for v in states.values())
    return min(queued, max(0, jobs - running))


def run(cfg, args) -> None:
    sw = cfg.sweep
    todo = settings(list(sw.bits), list(sw.methods), list(sw.ablation_bits), list(sw.seeds))
    names = {s.name(sw.name): s for s in todo}
    print(f"[sweep] {len(todo)} experiments: " + ", ".join(names), file=sys.stderr)
    if args.dry_run:
        for name, s in names.items():
            print(name, " ".join(f"-S {k}={v}" for k, v in s.overrides().items()))
        return
    if not Path(".git").exists() or not Path("dvc.yaml").is_file():
        raise UserError("run the sweep from the project root of a git + DVC repository (dvc exp needs git)")
    env = dict(os.environ)
    if cfg.tracking.enabled:
        # queued experiments run in .dvc/tmp/exps/...: point their MLflow at this project's db
        env["QDIT_TRACKING_URI"] = absolute_uri(tracking_uri(cfg))
    if sw.jobs > 1 and "OMP_NUM_THREADS" not in env:
        # each experiment's torch would use every core: share them instead (2 jobs x 2 threads
        # on this 2-core machine took 166 s for a 1000-image sample stage)
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // sw.jobs))
    start = time.time()
    if not args.no_repro:
        print("[sweep] dvc repro (the baseline; shared stages land in the cache)", file=sys.stderr)
        subprocess.run(["dvc", "repro"], env=env, check=True)
    _dvc("exp", "remove", *names, check=False)  # a rerun replaces the experiments of the same name
    for name, s in names.items():
        sets = [a for k, v in s.overrides().items() for a in ("-S", f"{k}={v}")]
        _dvc("exp", "run", "--queue", "-n", name, *sets, "-S", f"tracking.sweep={sw.name}", env=env)
    _dvc("queue", "start", "-j", str(sw.jobs), env=env)
    states: dict[str, str] = {}
    short = 0  # polls in a row with queued experiments and idle job slots
    restarts = 0
    with tqdm(total=len(names), desc="sweep", unit="exp") as bar:
        while True:
            time.sleep(args.poll)
            states = _states(set(names))
            finished = sum(states.get(n) in DONE for n in names)
            bar.update(finished - bar.n)
            if finished == len(names):
                break
            missing = _idle_slots(states, int(sw.jobs))
            short = short + 1 if missing else 0
            if short >= 3:
                # DVC's queue workers can exit while experiments are still queued
                # (treeverse/dvc#10562): a sweep then runs on fewer workers, or stalls
                _dvc("queue", "start", "-j", str(missing), env=env, check=False)
                restarts += 1
                short = 0
    seconds = time.time() - start
    failed = sorted(n for n in names if states.get(n) == "Failed")
    out = SWEEPS / sw.name
    out.mkdir(parents=True, exist_ok=True)
    write_json(
        out / "sweep.json",
        {
            "name": sw.name,
            "experiments": sorted(names),
            "failed": failed,
            "jobs": int(sw.jobs),
            "seconds": seconds,
            "worker_restarts": restarts,
            "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
        },
    )
    print(
        f"[sweep] {len(names) - len(failed)}/{len(names)} experiments in {seconds / 60:.1f} min; "
        f"`dvc exp show`, `python -m stages.report --sweep {sw.name}`",
        file=sys.stderr,
    )
    if failed:
        raise UserError(f"{len(failed)} experiments failed: {', '.join(failed)}; see `dvc queue logs <name>`")


def cli(argv: list[str] | None = None) -> None:
    main("sweep", run, add_args, argv=argv)


if __name__ == "__main__":
    cli()
