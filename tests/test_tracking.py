from omegaconf import OmegaConf

from pipeline.tracking import absolute_uri, tracking_uri


def test_tracking_uri_precedence(monkeypatch, tmp_path):
    cfg = OmegaConf.create({"tracking": {"uri": "sqlite:///mlflow.db"}})
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
