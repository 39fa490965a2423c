import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import load_params
from pipeline.errors import UserError
from tests.helpers import REPO, write_params


def test_repository_params_are_valid():
    cfg = load_params(REPO / "params.yaml")
    assert cfg.model.source == "tiny"
    assert cfg.sample.num_images >= 1


def _params_with(tmp_path: Path, extra: dict) -> Path:
    return write_params(tmp_path, extra)


@pytest.mark.parametrize(
    "extra, key, fragment",
    [
        ({"sample": {"num_imgs": 10}}, "sample.num_imgs", "did you mean 'num_images'"),
        ({"sampel": {"steps": 10}}, "sampel", "allowed in the top level"),
        ({"model": {"tiny": {"layers": 3}}}, "model.tiny.layers", "allowed in section 'model.tiny'"),
    ],
)
def test_unknown_key_names_key_and_allowed(tmp_path, extra, key, fragment):
    with pytest.raises(UserError) as err:
        load_params(_params_with(tmp_path, extra))
    msg = str(err.value)
    assert f"unknown key '{key}'" in msg and fragment in msg


@pytest.mark.parametrize(
    "extra, key",
    [
        ({"sample": {"steps": "many"}}, "sample.steps"),
        ({"calibrate": {"guidance_scale": "strong"}}, "calibrate.guidance_scale"),
        ({"tracking": {"enabled": "perhaps"}}, "tracking.enabled"),
        ({"sample": {"num_images": 1.5}}, "sample.num_images"),
    ],
)
def test_wrong_type_names_key(tmp_path, extra, key):
    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_params(_params_with(tmp_path, extra))


@pytest.mark.parametrize(
    "extra, key, allowed",
    [
        ({"sample": {"scheduler": "euler"}}, "sample.scheduler", "ddim, ddpm, dpm_solver"),
        ({"sample": {"num_images": 0}}, "sample.num_images", "an integer from 1 to 1048576"),
        ({"stats": {"batch_size": 0}}, "stats.batch_size", "an integer >= 1"),
        ({"quant": {"act": {"mode": "none"}}}, "quant.act.mode", "auto, dynamic, static, static_timestep"),
        ({"search": {"mutation_prob": 1.5}}, "search.mutation_prob", "0 <= value <= 1"),
        ({"sweep": {"seeds": [1, 1]}}, "sweep.seeds", "distinct integers from 0 to 1000"),
        ({"calibrate": {"steps": 2000}}, "calibrate.steps", "1 to 1000"),
        ({"sample": {"guidance_scale": 0.5}}, "sample.guidance_scale", ">= 1.0"),
        ({"trainer": {"devices": 0}}, "trainer.devices", "'auto', -1 (all) or an integer >= 1"),
        ({"trainer": {"strategy": "ddp_spawn"}}, "trainer.strategy", "auto, ddp"),
        ({"trainer": {"precision": "fp8"}}, "trainer.precision", "32-true"),
        ({"model": {"tiny": {"patch_size": 3}}}, "model.tiny.patch_size", "1, 2, 4 or 8"),
        ({"evaluate": {"features": "clip"}}, "evaluate.features", "auto, digits, inception"),
        ({"sample": {"seed": 5000}}, "sample.seed", "0 to 4095"),
        ({"sample": {"num_images": 2**21}}, "sample.num_images", "1 to 1048576"),
    ],
)
def test_unsupported_value_names_key_value_and_allowed(tmp_path, extra, key, allowed):
    with pytest.raises(UserError) as err:
        load_params(_params_with(tmp_path, extra))
    msg = str(err.value)
    section, name = key.rsplit(".", 1)
    value = extra
    for part in key.split("."):
        value = value[part]
    assert f"{key} = {value!r} is not allowed" in msg
    assert allowed in msg


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UserError, match="parameter file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("sample: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_params(bad)


def test_stage_refuses_bad_params_with_exit_2_and_writes_nothing(tmp_path):
    params = write_params(tmp_path, {"model": {"tiny": {"train_step": 5}}})
    proc = subprocess.run(
        [sys.executable, "-m", "stages.model"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1
    assert "unknown key 'model.tiny.train_step'" in errors[0] and "train_steps" in errors[0]
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [params.name]
    assert yaml.safe_load(params.read_text())["model"]["tiny"]["train_step"] == 5


def test_a_section_of_the_wrong_kind_names_what_it_holds(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sample"] = [1, 2]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(UserError, match=r"sample = \[1, 2\] is not allowed; allowed: a mapping of num_images, steps"):
        load_params(tmp_path / "params.yaml")


@pytest.mark.parametrize(
    "extra, message",
    [
        (
            {"sweep": {"methods": ["rtn", "smooth"]}},
            "sweep.methods = 'smooth' is not allowed; allowed: a non-empty list of rtn | groups | dynamic | qdit | "
            "smoothquant | ptq4dit | repq | svdquant, each optionally followed by "
            "+dynamic / +gptq / +smooth / +lowrank",
        ),
        ({"sweep": {"methods": ["qdit+lora"]}}, "sweep.methods = 'qdit+lora' is not allowed"),
        ({"quant": {"smooth": {"alpha": 1.5}}}, "quant.smooth.alpha = 1.5 is not allowed; allowed: null (the method"),
        ({"quant": {"lowrank": {"rank": -1}}}, "quant.lowrank.rank = -1 is not allowed; allowed: null"),
        ({"search": {"group_sizes": [16, 0]}}, "search.group_sizes = 0 is not allowed; allowed: a non-empty list of"),
    ],
)
def test_a_bad_list_element_is_named(tmp_path, extra, message):
    with pytest.raises(UserError, match=re.escape(message)):
        load_params(_params_with(tmp_path, extra))


def test_overrides_are_yaml_values_over_the_file():
    cfg = load_params(
        REPO / "params.yaml", ["quant.weight.bits=8", "search.group_sizes=[32, 64]", "evaluate.inception_weights=null"]
    )
    assert cfg.quant.weight.bits == 8 and cfg.search.group_sizes == [32, 64]
    with pytest.raises(UserError, match="quant.weight.bits = '8x' is not allowed; allowed: 2 to 8, or 16"):
        load_params(REPO / "params.yaml", ["quant.weight.bits=8x"])
    with pytest.raises(UserError, match="unknown key 'quant.wieght' \\(did you mean 'weight'\\?\\)"):
        load_params(REPO / "params.yaml", ["quant.wieght.bits=8"])
    with pytest.raises(UserError, match="override 'bits'; expected key=value"):
        load_params(REPO / "params.yaml", ["bits"])


def test_choices_are_their_strings_and_validation_needs_no_torch():
    cfg = load_params(REPO / "params.yaml")
    assert type(cfg.quant.method) is str and type(cfg.sample.scheduler) is str  # plain values in YAML/JSON
    code = (
        "import sys, pipeline.config, stages.preset; "
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
