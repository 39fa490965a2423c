"""Parameter presets (presets/*.yaml) run as DVC experiments through `stages.preset`."""

import pytest

from tests.conftest import run_stage
from tests.helpers import REPO


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("name, steps", [("paper-256", 100), ("paper-512", 50), ("paper-256-reference", 100)])
def test_paper_presets_validate_and_become_overrides(in_repo, capsys, name, steps):
    run_stage("preset", name, "--dry-run", "-S", "model.source=/models/DiT-XL-2")
    cmd = capsys.readouterr().out.strip()
    assert cmd.startswith(f"dvc exp run -n {name} -S ")
    for item in (
        f"sample.steps={steps}",
        "sample.num_images=10000",
        "sample.guidance_scale=1.5",
        "calibrate.num_samples=256",
        "calibrate.guidance_scale=1.5",
        "quant.weight.group_size=128",
        "'search.group_sizes=[32, 64, 128, 192, 288]'",
        "search.fitness=fid",
        "search.num_images=800",
        "evaluate.features=inception",
    ):
        assert f" -S {item}" in cmd, item
    assert cmd.endswith("-S model.source=/models/DiT-XL-2")  # yours come last, so they win
    if name == "paper-256-reference":  # the reference code's recipe (docs/methods.md)
        for item in ("quant.weight.gptq=true", "quant.weight.clip_search=false"):
            assert f" -S {item}" in cmd, item
        assert " -S 'quant.weight_only=[transformer_blocks.*.norm1.linear]'" in cmd


def test_unknown_preset_and_bad_override_are_refused(in_repo, capsys):
    with pytest.raises(SystemExit) as e:
        run_stage("preset", "paper-1024", "--dry-run")
    assert e.value.code == 2
    assert (
        "preset 'paper-1024': no file presets/paper-1024.yaml; available: paper-256, paper-256-reference, paper-512"
        in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as e:
        run_stage("preset", "paper-256", "--dry-run", "-S", "sample.steps=5000")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "preset paper-256 (with your -S)" in err and "sample.steps = 5000 is not allowed" in err
