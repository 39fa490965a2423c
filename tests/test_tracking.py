import os
from types import SimpleNamespace

import pytest

from pipeline.config import TrackingConfig
from pipeline.tracking import absolute_uri, tracking_uri


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    cfg = SimpleNamespace(
        tracking=TrackingConfig(enabled=True, uri="sqlite:///mlflow.db", experiment="qdit", sweep=None)
    )
    monkeypatch.delenv("QDIT_TRACKING_URI", raising=False)
    # MLflow writes $MLFLOW_TRACKING_URI itself (set_tracking_uri): it must not steer our stages
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/other.db")
    assert tracking_uri(cfg) == "sqlite:///mlflow.db"
    monkeypatch.setenv("QDIT_TRACKING_URI", "sqlite:////project/mlflow.db")
    assert tracking_uri(cfg) == "sqlite:////project/mlflow.db"


def test_absolute_uri(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("http://server:5000") == "http://server:5000"


def test_two_processes_logging_to_one_db_lose_and_mix_nothing(tmp_path):
    """Two stages of different experiments log into the project's mlflow.db at the same time
    (as `dvc queue start -j 2` makes them): every run arrives with its own params and metrics."""
    import subprocess
    import sys

    import mlflow

    from tests.helpers import REPO, write_params

    write_params(tmp_path)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # each process announces it is ready (imports done) and waits for the other: they log at once
    script = (
        "import sys, time, pathlib; from pipeline.config import load_params; from pipeline.tracking import log_stage\n"
        "cfg = load_params('params.yaml'); p = int(sys.argv[1])\n"
        "pathlib.Path(f'ready-{p}').touch()\n"
        "while not all(pathlib.Path(f'ready-{q}').exists() for q in (1, 2)): time.sleep(0.01)\n"
        "for k in range(6):\n"
        "    log_stage(cfg, f'p{p}-{k}', {'proc': p, 'k': k}, {'value': 100 * p + k})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "QDIT_TRACKING_URI": db, "MLFLOW_DISABLE_TELEMETRY": "true"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(p)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in (1, 2)
    ]
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, out[-2000:]
    client = mlflow.MlflowClient(tracking_uri=db)
    runs = client.search_runs([client.get_experiment_by_name("qdit").experiment_id], max_results=100)
    assert len(runs) == 12
    for r in runs:
        p, k = int(r.data.params["proc"]), int(r.data.params["k"])
        assert r.info.run_name == f"p{p}-{k}" and r.data.metrics["value"] == 100 * p + k
        assert r.info.status == "FINISHED"
    # the two writers were at work at the same time: their spans of runs overlap
    spans = {p: [(r.info.start_time, r.info.end_time) for r in runs if r.data.params["proc"] == str(p)] for p in (1, 2)}
    (s1, e1), (s2, e2) = ((min(s for s, _ in v), max(e for _, e in v)) for v in spans.values())
    assert max(s1, s2) < min(e1, e2), spans


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.15, 0.3])
def test_killed_while_creating_the_db_the_next_stage_still_logs(tmp_path, delay):
    """A stage SIGKILLed during its first MLflow log, while it creates the db (the schema is many
    migrations; about 0.9 s on the 2-core machine), must not leave a db that no later stage can
    open. The kill comes `delay` s after the temporary db appears, and must find it unfinished."""
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    from pipeline.config import load_params
    from pipeline.tracking import log_stage
    from tests.helpers import REPO, write_params

    write_params(tmp_path)
    db = f"sqlite:///{tmp_path / 'mlflow.db'}"
    script = (
        "from pipeline.config import load_params; from pipeline.tracking import log_stage\n"
        "log_stage(load_params('params.yaml'), 'killed', {'a': 1}, {'v': 1.0})\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "QDIT_TRACKING_URI": db, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".mlflow.db.tmp-*")):
        assert proc.poll() is None and time.monotonic() < deadline, "the db was never created"
        time.sleep(0.002)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # the kill landed during creation: the temporary db is there, the real one is not
    assert list(tmp_path.glob(".mlflow.db.tmp-*")) and not (tmp_path / "mlflow.db").exists()
    os.environ["QDIT_TRACKING_URI"] = db
    try:
        log_stage(load_params(str(tmp_path / "params.yaml")), "next", {"a": 2}, {"v": 2.0})
    finally:
        del os.environ["QDIT_TRACKING_URI"]
    client = mlflow.MlflowClient(tracking_uri=db)
    runs = client.search_runs([client.get_experiment_by_name("qdit").experiment_id])
    assert "next" in [r.info.run_name for r in runs]
    assert not list(tmp_path.glob(".mlflow.db.tmp-*"))
