"""Every artifact records what produced it; a stage refuses inputs made from another model."""

import json
import shutil

import pytest
import yaml

from pipeline.provenance import code_sha256
from stages.common import STAGE_PARAMS
from tests.conftest import run_stage
from tests.helpers import REPO

RECORDS = {  # stage -> the JSON that carries its provenance
    "calibrate": "data/calib/manifest.json",
    "stats": "data/stats/index.json",
    "search": "data/search/search.json",
    "quantize": "data/quant/quant.json",
    "sample_fp": "data/samples_fp/info.json",
    "sample": "data/samples/info.json",
    "evaluate": "metrics.json",
}


def test_stage_params_are_dvc_yamls():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert {name: s.get("params", []) for name, s in stages.items()} == STAGE_PARAMS


def test_every_artifact_records_code_params_seeds_and_model(built_pipeline):
    model = json.loads((built_pipeline / "data/model/provenance.json").read_text())
    assert len(model["model"]) == 16 and model["seeds"] == {"model.seed": 0}
    records = {stage: json.loads((built_pipeline / path).read_text())["provenance"] for stage, path in RECORDS.items()}
    for stage, rec in records.items():
        assert rec["stage"] == stage and rec["params"] == STAGE_PARAMS[stage]
        assert rec["model"] == model["model"], stage  # all descend from this model
        assert len(rec["params_sha256"]) == 16
    # each hashes the code its stage runs: stages that share a script share it, others differ
    code = {stage: rec["code_sha256"] for stage, rec in records.items()} | {"model": model["code_sha256"]}
    assert code["sample"] == code["sample_fp"] == code_sha256("stages.sample")
    assert code["model"] == code_sha256("stages.model") and len(set(code.values())) == 7
    params = yaml.safe_load((built_pipeline / "params.yaml").read_text())
    assert records["calibrate"]["seeds"] == {"calibrate.seed": params["calibrate"]["seed"]}
    assert records["sample"]["seeds"] == {"sample.seed": params["sample"]["seed"]}
    assert set(records["search"]["seeds"]) == {"search.seed", "search.image_seed"}
    # the stage's own parameters, and only those, move its hash
    assert records["sample"]["params_sha256"] != records["sample_fp"]["params_sha256"]  # + quant.backend


def test_params_hash_follows_the_stages_params_only(pipeline_copy):
    from pipeline.config import load_params
    from stages.common import provenance

    base = load_params("params.yaml")
    before = {stage: provenance(base, stage)["params_sha256"] for stage in STAGE_PARAMS}
    base.sample.steps += 1
    base.trainer.devices = 2  # never part of a hash: 1 and N devices write the same bytes
    after = {stage: provenance(base, stage)["params_sha256"] for stage in STAGE_PARAMS}
    assert {s for s in STAGE_PARAMS if before[s] != after[s]} == {"sample", "sample_fp"}


@pytest.mark.parametrize(
    "stage, argv, made_from",
    [
        ("stats", (), "data/calib/manifest.json"),
        ("quantize", (), "data/search/search.json"),
        ("sample", (), "data/quant/quant.json"),
        ("evaluate", (), "data/samples/info.json"),
    ],
)
def test_input_made_from_another_model_is_refused(pipeline_copy, capsys, stage, argv, made_from):
    record = pipeline_copy / "data/model/provenance.json"
    rec = json.loads(record.read_text())
    rec["model"] = "0123456789abcdef"  # as if data/model had been replaced by another model
    record.write_text(json.dumps(rec))
    outputs = {"stats": "data/stats", "quantize": "data/quant", "sample": "data/samples", "evaluate": "metrics.json"}
    out = pipeline_copy / outputs[stage]
    before = sorted(p.stat().st_mtime_ns for p in ([out] if out.is_file() else out.rglob("*")))
    with pytest.raises(SystemExit) as exit_:
        run_stage(stage, *argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"{made_from} was made from another FP model (fingerprint " in err
    assert "than the one in data/model (0123456789abcdef): rerun the stages after `model`" in err
    assert sorted(p.stat().st_mtime_ns for p in ([out] if out.is_file() else out.rglob("*"))) == before


def test_artifacts_without_a_record_still_load(pipeline_copy):
    """Outputs of an older version (no provenance) are not refused: DVC reruns them anyway."""
    (pipeline_copy / "data/model/provenance.json").unlink()
    shutil.rmtree(pipeline_copy / "data/samples")
    run_stage("sample")
    assert json.loads((pipeline_copy / "data/samples/info.json").read_text())["provenance"]["model"] is None
