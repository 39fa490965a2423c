"""model.source pointing at a local diffusers DiT: a randomly initialised DiT-XL/2-config model
with a tiny VAE stands in for facebook/DiT-XL-2-256, which cannot be downloaded here."""

import json
import shutil

import numpy as np
import pytest
import yaml

from pipeline.io import read_calibration, read_images
from tests.conftest import run_stage
from tests.helpers import REPO, deep_update, save_latent_pipeline, write_params, xl_config_dit


def test_dit_xl2_config_runs_the_paper_preset_with_small_counts(tmp_path, monkeypatch, capsys):
    src = save_latent_pipeline(tmp_path / "DiT-XL-2-256", xl_config_dit())
    proj = tmp_path / "proj"
    proj.mkdir()
    # presets/paper-256.yaml (guidance 1.5, g = 128, the reference's candidates, Inception
    # features, ADM reference) with counts, devices and fitness a CPU can afford
    preset = yaml.safe_load((REPO / "presets/paper-256.yaml").read_text())
    small = {
        "model": {"source": str(src)},
        "calibrate": {"num_samples": 2, "steps": 2, "batch_size": 2},
        "stats": {"batch_size": 2},
        "quant": {"weight": {"clip_search": False}, "gptq": {"batch_size": 2}},
        "search": {
            "group_sizes": [128, 288],
            "population": 3,
            "top_k": 2,
            "mutations": 2,
            "crossovers": 0,
            "generations": 1,
            "fitness": "mse",
        },  # no XL sampling on CPU
        "sample": {"num_images": 2, "steps": 2, "batch_size": 2, "grid_size": 1},
        "trainer": {"accelerator": "cpu", "devices": 1, "precision": "32-true"},
    }
    write_params(proj, deep_update(preset, small))
    monkeypatch.chdir(proj)
    run_stage("model")
    shutil.rmtree(src)  # everything downstream must come from data/model
    info = json.loads((proj / "data/model/model.json").read_text())
    assert info["latent"] and info["num_layers"] == 28 and info["hidden_size"] == 1152
    assert info["num_classes"] == 1000 and info["sample_size"] == 32 and info["out_channels"] == 8

    run_stage("calibrate")
    records, manifest = read_calibration(proj / "data/calib")
    assert records["x"].shape == (2, 4, 32, 32) and manifest["null_label"] == 1000
    assert manifest["guidance_scale"] == 1.5  # the preset's

    run_stage("stats")
    index = json.loads((proj / "data/stats/index.json").read_text())
    assert sum(v["quantized_by_default"] for v in index["layers"].values()) == 28 * 6
    assert index["layers"]["transformer_blocks.27.ff.net.2"]["in_features"] == 4608

    run_stage("sample", "--fp")
    images = read_images(proj / "data/samples_fp/images.npz")["images"]
    assert images.shape == (2, 256, 256, 3) and images.dtype == np.uint8
    assert images.std() > 0

    run_stage("search")  # 168 genes (q, k, v apart); two candidates keep it short here
    searched = json.loads((proj / "data/search/search.json").read_text())
    assert searched["layers"] == 28 * 6 and searched["plan"]["gbitops"] <= searched["budget"]
    run_stage("quantize")  # Q-DiT W4A8, g = 128 as in the paper
    summary = json.loads((proj / "data/quant/quant.json").read_text())
    assert summary["quantized_layers"] == 28 * 6 and 0 < summary["calib_rel_err"] < 0.5
    run_stage("sample")
    q_images = read_images(proj / "data/samples/images.npz")["images"]
    assert q_images.shape == images.shape and not np.array_equal(q_images, images)

    # Inception features need the optional extra; without it: one clear message, no metrics
    try:
        import torch_fidelity  # noqa: F401

        return
    except ImportError:
        pass
    with pytest.raises(SystemExit) as exit_:
        run_stage("evaluate")
    assert exit_.value.code == 2
    assert "pip install -e '.[imagenet]'" in capsys.readouterr().err
    assert not (proj / "metrics.json").exists()
