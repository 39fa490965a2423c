"""MLflow: one run per stage execution, grouped by a shared tag.

Runs of one configuration share `qdit.run_group` (the hash of params.yaml, or the DVC
experiment name under `dvc exp run`, or $QDIT_RUN_GROUP), so a user filters one pipeline
execution and sorts runs of different bit settings by FID.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.ablation import method_of
from pipeline.config import Params, flat
from pipeline.errors import UserError
from pipeline.provenance import code_sha256


def params_hash(cfg: Params) -> str:
    text = yaml.safe_dump(cfg.model_dump(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def run_group(cfg: Params) -> str:
    return os.environ.get("QDIT_RUN_GROUP") or os.environ.get("DVC_EXP_NAME") or params_hash(cfg)


def _git_commit() -> str:
    try:
        return (
            subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def tracking_uri(cfg: Params) -> str:
    """$QDIT_TRACKING_URI, else tracking.uri: the environment lets a stage that runs in another
    directory (a queued DVC experiment) log to the project's db. Not $MLFLOW_TRACKING_URI:
    mlflow.set_tracking_uri writes that variable, so it would leak from one stage to the next
    in one process."""
    return os.environ.get("QDIT_TRACKING_URI") or cfg.tracking.uri


_SQLITE = "sqlite:///"


def absolute_uri(uri: str) -> str:
    """A relative sqlite path made absolute (from the current directory)."""
    if uri.startswith(_SQLITE) and not uri.startswith(_SQLITE + "/"):
        return _SQLITE + str(Path(uri[len(_SQLITE) :]).resolve())
    return uri


def _artifact_root(uri: str) -> str:
    """Artifacts beside an sqlite db (never ./mlruns, which MLflow 3 refuses)."""
    base = Path(uri[len(_SQLITE) :]).resolve().parent if uri.startswith(_SQLITE) else Path.cwd()
    return (base / "mlartifacts").as_uri()


def _experiment_id(mlflow, name: str, uri: str) -> str:
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = _artifact_root(uri)
    try:
        return mlflow.create_experiment(name, artifact_location=artifacts)
    except Exception:
        exp = mlflow.get_experiment_by_name(name)  # created concurrently by another stage
        if exp is None:
            raise
        return exp.experiment_id


def _log_series(mlflow, run_id: str, series: dict[str, list[float]]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    entries = [Metric(name, float(v), now, step) for name, values in series.items() for step, v in enumerate(values)]
    client = mlflow.MlflowClient()
    for start in range(0, len(entries), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=entries[start : start + 1000])


def log_stage(
    cfg: Params,
    stage: str,
    params: dict[str, Any],
    metrics: dict[str, Any],
    artifacts: list[Path] = (),
    series: dict[str, list[float]] | None = None,
) -> str | None:
    """Record one stage execution; returns the run id (None when tracking is disabled)."""
    if not cfg.tracking.enabled:
        return None
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    try:
        import mlflow
    except ImportError:
        raise UserError(
            "tracking.enabled is true but mlflow is not installed; install it or set tracking.enabled: false"
        ) from None
    uri = tracking_uri(cfg)
    with _db_lock(uri):
        return _log(mlflow, cfg, uri, stage, params, metrics, artifacts, series)


@contextlib.contextmanager
def _db_lock(uri: str):
    """One writer at a time on an sqlite store: two stages starting together on a new db would
    both run MLflow's schema migrations and one would fail (found by the concurrency test)."""
    if not uri.startswith(_SQLITE):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    db = Path(uri[len(_SQLITE) :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            _create_db(db, uri)
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _create_db(path: Path, uri: str) -> None:
    """Create a new sqlite store (at `path`, of `uri`) under a temporary name and rename it into
    place. MLflow builds the schema in many migrations: a stage killed among them left a db
    that no later stage could open ('table ... already exists'; found by the SIGKILL tests)."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # a killed creation; we hold the lock
        stale.unlink(missing_ok=True)
    if path.exists():
        return
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    store = SqlAlchemyStore(_SQLITE + str(tmp), _artifact_root(uri))  # creates and migrates the schema
    store.engine.dispose()
    os.replace(tmp, path)


def _log(
    mlflow, cfg: Params, uri: str, stage: str, params: dict[str, Any], metrics: dict[str, Any], artifacts, series
) -> str:
    mlflow.set_tracking_uri(uri)
    tags = {
        "qdit.stage": stage,
        "qdit.run_group": run_group(cfg),
        "qdit.params_hash": params_hash(cfg),
        "qdit.git_commit": _git_commit(),
        "qdit.code_sha256": code_sha256(),  # of all the source; artifacts hash their stage's own
        "qdit.method": method_of(flat(cfg, ["quant", "search"])),  # as sweeps name it: qdit+gptq, svdquant, ...
    }
    if os.environ.get("DVC_EXP_NAME"):
        tags["qdit.dvc_exp"] = os.environ["DVC_EXP_NAME"]
    if cfg.tracking.sweep:
        tags["qdit.sweep"] = cfg.tracking.sweep
    with mlflow.start_run(
        experiment_id=_experiment_id(mlflow, cfg.tracking.experiment, uri), run_name=stage, tags=tags
    ) as run:
        mlflow.log_params({k: ("null" if v is None else v) for k, v in params.items()})
        scalars = {k: float(v) for k, v in metrics.items() if v is not None}
        if scalars:
            mlflow.log_metrics(scalars)
        _log_series(mlflow, run.info.run_id, series or {})
        for path in artifacts:
            path = Path(path)
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=path.name)
            elif path.exists():
                mlflow.log_artifact(str(path))
        return run.info.run_id
