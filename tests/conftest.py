import os

# before anything imports huggingface_hub, which reads these once
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _triton_interpreter() -> None:
    """Without a GPU, run the Triton kernels in Triton's interpreter (on CPU tensors) where
    Triton is installed: set before any kernel is defined, since triton.jit reads it then."""
    import importlib.util

    import torch

    if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
        os.environ.setdefault("TRITON_INTERPRET", "1")


_triton_interpreter()

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from tests.helpers import write_params  # noqa: E402


def run_stage(name: str, *argv: str) -> None:
    """Run a stage in-process, as `python -m stages.<name>` would."""
    import importlib

    importlib.import_module(f"stages.{name}").cli(list(argv))


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """An empty project directory (cwd) with the fast parameter file."""
    write_params(tmp_path)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def built_pipeline(tmp_path_factory) -> Path:
    """The whole embedded pipeline run once on fast settings; tests copy it, never modify it."""
    root = tmp_path_factory.mktemp("pipeline")
    write_params(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        for stage, args in [
            ("model", ()),
            ("calibrate", ()),
            ("stats", ()),
            ("search", ()),
            ("quantize", ()),
            ("sample", ("--fp",)),
            ("sample", ()),
            ("evaluate", ()),
        ]:
            run_stage(stage, *args)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def pipeline_copy(built_pipeline, tmp_path, monkeypatch) -> Path:
    """A private copy of the built pipeline as cwd, with its own MLflow database."""
    dst = tmp_path / "proj"
    shutil.copytree(built_pipeline, dst, ignore=shutil.ignore_patterns("mlflow.db", "mlartifacts"))
    write_params(dst)
    monkeypatch.chdir(dst)
    return dst
