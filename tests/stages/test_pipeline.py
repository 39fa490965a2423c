"""The embedded pipeline end to end on fast settings (stages run in-process)."""

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pipeline.io import read_calibration, read_images
from pipeline.models.loader import load_fp_model
from pipeline.sampling import denoise, make_scheduler
from pipeline.seeds import generators, image_seed, initial_noise
from tests.conftest import run_stage
from tests.helpers import FAST, write_params

N_IMAGES = FAST["sample"]["num_images"]
N_CALIB = FAST["calibrate"]["num_samples"]
CALIB_STEPS = FAST["calibrate"]["steps"]


def test_model_stage_writes_a_diffusers_dir_and_classifier(built_pipeline):
    info = json.loads((built_pipeline / "data/model/model.json").read_text())
    assert info["source"] == "tiny" and info["num_classes"] == 10 and not info["latent"]
    assert info["num_layers"] == FAST["model"]["tiny"]["num_layers"]
    assert 0.8 < info["classifier_heldout_accuracy"] <= 1.0
    for f in (
        "transformer/config.json",
        "transformer/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "classifier/model.safetensors",
    ):
        assert (built_pipeline / "data/model" / f).is_file()
    assert not any(p.name.startswith(".") for p in (built_pipeline / "data").iterdir())


def test_calibration_records_are_the_trajectories_x_t(built_pipeline):
    records, manifest = read_calibration(built_pipeline / "data/calib")
    assert manifest["count"] == N_CALIB and records["x"].shape == (N_CALIB, 1, 8, 8)
    assert manifest["records_per_step"] == [N_CALIB // CALIB_STEPS] * CALIB_STEPS
    assert len(manifest["timesteps"]) == CALIB_STEPS
    assert manifest["timesteps"] == sorted(manifest["timesteps"], reverse=True)
    assert set(records["y"].tolist()) <= set(range(10))
    # regenerate two trajectories independently and compare the stored x_t
    fp = load_fp_model(built_pipeline / "data/model")
    for i in (0, N_CALIB - 1):
        gens = generators(1, torch.tensor([i]))
        noise = initial_noise(gens, fp.latent_shape, torch.float32)
        label = torch.randint(0, 10, (1,), generator=gens[0])
        assert label.item() == records["y"][i]
        seen = {}
        denoise(
            fp.transformer,
            make_scheduler("ddim", fp.scheduler_config, CALIB_STEPS),
            noise,
            label,
            guidance_scale=1.0,
            null_label=10,
            on_step=lambda s, t, x, seen=seen: seen.setdefault(s, (int(t), x.clone())),
        )
        t, x = seen[int(records["step"][i])]
        assert t == records["t"][i]
        assert np.allclose(x.numpy()[0], records["x"][i], atol=1e-6)


def test_stats_cover_every_linear_and_timestep(built_pipeline):
    stats = load_file(str(built_pipeline / "data/stats/stats.safetensors"))
    index = json.loads((built_pipeline / "data/stats/index.json").read_text())
    fp = load_fp_model(built_pipeline / "data/model")
    linears = [n for n, m in fp.transformer.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(index["layers"]) == sorted(linears)
    assert sum(v["quantized_by_default"] for v in index["layers"].values()) == 6 * FAST["model"]["tiny"]["num_layers"]
    for name in linears:
        lo, hi, am = stats[f"{name}/min"], stats[f"{name}/max"], stats[f"{name}/absmax"]
        assert lo.shape == (CALIB_STEPS, index["layers"][name]["in_features"])
        assert (lo <= hi).all() and torch.equal(am, torch.maximum(hi, -lo))
        assert torch.equal(stats[f"{name}/absmax_all"], am.amax(0))
    assert stats["count"].tolist() == [N_CALIB // CALIB_STEPS] * CALIB_STEPS
    for png in ("activation_ranges.png", "top_channels.png"):
        assert (built_pipeline / "data/stats" / png).stat().st_size > 10_000
    rows = (built_pipeline / "plots/act_range.csv").read_text().splitlines()
    assert len(rows) == CALIB_STEPS + 1 and rows[0].startswith("timestep,")


def test_samples_are_seeded_per_image_and_quantized_ones_stay_close(built_pipeline):
    fp = read_images(built_pipeline / "data/samples_fp/images.npz")
    q = read_images(built_pipeline / "data/samples/images.npz")
    assert fp["images"].shape == q["images"].shape == (N_IMAGES, 8, 8, 1)
    assert fp["seeds"].tolist() == q["seeds"].tolist() == [image_seed(0, i) for i in range(N_IMAGES)]
    assert fp["labels"].tolist() == [i % 10 for i in range(N_IMAGES)]
    assert len({im.tobytes() for im in fp["images"]}) == N_IMAGES
    diff = np.abs(fp["images"].astype(int) - q["images"].astype(int))
    assert diff.max() > 0 and diff.mean() < 20  # W4A8: changed, but the same digits
    info = json.loads((built_pipeline / "data/samples/info.json").read_text())
    assert info["model"].startswith("qdit W4A8 (group ") and info["model"].endswith(", 12 layers")  # searched g
    assert (built_pipeline / "data/samples/grid.png").is_file()


def test_quantize_stage_outputs(built_pipeline):
    from pipeline.quant.checkpoint import read_checkpoint

    plan, state = read_checkpoint(built_pipeline / "data/quant")
    assert plan.method == "qdit" and len(plan.layers) == 6 * FAST["model"]["tiny"]["num_layers"]
    codes = {k: v for k, v in state.items() if k.endswith((".qweight", ".qweight_int4"))}
    assert len(codes) == len(plan.layers) and all(v.dtype == torch.uint8 for v in codes.values())
    assert all(k.endswith(".qweight_int4") for k in codes)  # W4: two codes per byte
    summary = json.loads((built_pipeline / "data/quant/quant.json").read_text())
    assert summary["size_mb"] < summary["fp16_size_mb"]
    assert 0 < summary["calib_rel_err"] < 0.2
    assert 15 < summary["weight_sqnr_db_mean"] < 40


def test_evaluate_metrics(built_pipeline):
    m = json.loads((built_pipeline / "metrics.json").read_text())
    assert m["num_images"] == N_IMAGES and m["features"] == "digits" and m["quant"] == "qdit"
    assert 0 < m["fid"] < 1e4 and 0 < m["fid_fp_model"] < 1e4
    assert 0 < m["fid_fp"] < m["fid_fp_model"]
    assert 20 < m["psnr_fp"] < 60 and 0.8 < m["ssim_fp"] < 1.0
    for suffix in ("", "_fp_model"):  # the whole suite, for the quantized and the FP samples
        assert 0 < m["sfid" + suffix] < 1e4 and 1.0 <= m["is" + suffix] <= 10.0
        assert 0.0 <= m["precision" + suffix] <= 1.0 and 0.0 <= m["recall" + suffix] <= 1.0
        assert isinstance(m["kid" + suffix], float) and math.isfinite(m["kid" + suffix])  # not None, not NaN
    q = json.loads((built_pipeline / "data/quant/quant.json").read_text())
    assert m["size_mb"] == q["size_mb"] and m["gbitops"] == q["gbitops"]
    search = json.loads((built_pipeline / "data/search/search.json").read_text())
    assert q["gbitops"] == pytest.approx(search["plan"]["gbitops"], rel=1e-9)  # cost.py's count, twice


def test_every_stage_logged_to_mlflow_under_one_group(built_pipeline):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{built_pipeline / 'mlflow.db'}")
    exp = client.get_experiment_by_name("qdit")
    runs = client.search_runs([exp.experiment_id])
    by_stage = {r.data.tags["qdit.stage"]: r for r in runs}
    assert set(by_stage) == {"model", "calibrate", "stats", "search", "quantize", "sample_fp", "sample", "evaluate"}
    assert len({r.data.tags["qdit.run_group"] for r in runs}) == 1
    ev = by_stage["evaluate"]
    assert ev.data.metrics["fid"] == pytest.approx(json.loads((built_pipeline / "metrics.json").read_text())["fid"])
    assert ev.data.metrics["size_mb"] < ev.data.metrics["fp16_size_mb"]
    assert by_stage["quantize"].data.params["quant.weight.bits"] == "4"
    assert by_stage["sample"].data.params["sample.num_images"] == str(N_IMAGES)
    assert "train_loss" in by_stage["model"].data.metrics
    arts = {a.path for a in client.list_artifacts(by_stage["stats"].info.run_id)}
    assert {"activation_ranges.png", "top_channels.png", "index.json"} <= arts
    assert "grid.png" in {a.path for a in client.list_artifacts(by_stage["sample"].info.run_id)}
    search = by_stage["search"]
    assert search.data.metrics["fitness_best"] <= search.data.metrics["fitness_uniform"]
    history = client.get_metric_history(search.info.run_id, "fitness_best")
    assert [m.step for m in history] == list(range(FAST["search"]["generations"] + 1))
    assert {"plan.yaml", "group_sizes.png", "fitness.png"} <= {
        a.path for a in client.list_artifacts(search.info.run_id)
    }


def test_rerun_gives_identical_samples_and_metrics(pipeline_copy, built_pipeline):
    run_stage("sample")
    run_stage("evaluate")
    a = np.load(built_pipeline / "data/samples/images.npz")
    b = np.load(pipeline_copy / "data/samples/images.npz")
    for k in ("images", "labels", "seeds"):
        assert np.array_equal(a[k], b[k])
    assert (built_pipeline / "metrics.json").read_text() == (pipeline_copy / "metrics.json").read_text()


def test_stage_without_its_input_fails_clearly_and_writes_nothing(project, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_stage("calibrate")
    assert exit_.value.code == 2
    assert "FP model not found" in capsys.readouterr().err
    assert not (project / "data").exists() or not any((project / "data").iterdir())


def test_corrupt_shard_stops_stats_and_nothing_is_written(pipeline_copy, capsys):
    import shutil

    shutil.rmtree("data/stats")
    shard = next((pipeline_copy / "data/calib").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[:-2000])
    with pytest.raises(SystemExit) as exit_:
        run_stage("stats")
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert shard.name in err and "corrupt" in err
    assert not (pipeline_copy / "data/stats").exists()
    assert not [p for p in (pipeline_copy / "data").iterdir() if p.name.startswith(".")]


def test_tracking_disabled_writes_no_mlflow_store(pipeline_copy):
    from tests.helpers import write_params

    write_params(pipeline_copy, {"tracking": {"enabled": False}})
    (pipeline_copy / "metrics.json").unlink()
    run_stage("evaluate")
    assert (pipeline_copy / "metrics.json").is_file()
    assert not (pipeline_copy / "mlflow.db").exists() and not (pipeline_copy / "mlartifacts").exists()


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (
            {"quant": {"weight": {"group_size": 48}}},
            "quant.weight.group_size = 48 is not allowed; allowed: a divisor of "
            "the embedded DiT's hidden size 128 (model.tiny.num_heads x head_dim): "
            "1, 2, 4, 8, 16, 32, 64, 128",
        ),
        ({"quant": {"weight": {"bits": 12}}}, "quant.weight.bits = 12 is not allowed; allowed: 2 to 8, or 16"),
        ({"quant": {"include": ["blocks.*.qkv"]}}, "matches no Linear"),
    ],
)
def test_quantize_refuses_bad_settings_and_writes_nothing(pipeline_copy, capsys, extra, fragment):
    import shutil

    from tests.helpers import write_params

    shutil.rmtree("data/search")
    write_params(pipeline_copy, extra)
    with pytest.raises(SystemExit) as exit_:
        run_stage("search")  # the first stage that reads quant.*
    assert exit_.value.code == 2
    assert fragment in capsys.readouterr().err
    assert not (pipeline_copy / "data/search").exists()


def test_plan_file_naming_a_missing_module(pipeline_copy, capsys):
    from tests.helpers import write_params

    plan = (
        (pipeline_copy / "data/quant/plan.yaml")
        .read_text()
        .replace("transformer_blocks.1.ff.net.2:", "transformer_blocks.9.ff.net.2:")
    )
    (pipeline_copy / "my_plan.yaml").write_text(plan)
    write_params(pipeline_copy, {"quant": {"plan": "my_plan.yaml"}})
    import shutil

    shutil.rmtree("data/search")
    with pytest.raises(SystemExit):
        run_stage("search")
    assert "plan names module 'transformer_blocks.9.ff.net.2'" in capsys.readouterr().err
    assert not (pipeline_copy / "data/search").exists()


def test_nan_in_activations_names_layer_and_timestep(pipeline_copy, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    path = pipeline_copy / "data/model/transformer/diffusion_pytorch_model.safetensors"
    weights = load_file(str(path))
    weights["transformer_blocks.1.ff.net.0.proj.weight"][3, 7] = float("nan")
    save_file(weights, str(path))
    shutil.rmtree("data/quant")
    with pytest.raises(SystemExit):
        run_stage("quantize")
    err = capsys.readouterr().err
    assert "non-finite activation (NaN or Inf) at the input of layer 'transformer_blocks.1.ff.net.2' at timestep" in err
    assert not (pipeline_copy / "data/quant").exists()


@pytest.mark.parametrize(
    "method, wbits, abits, gptq",
    [
        ("rtn", 8, 8, False),
        ("qdit", 6, 8, False),
        ("qdit", 4, 16, False),
        ("qdit", 16, 8, False),
        ("qdit", 4, 4, False),
        ("qdit", 4, 8, True),
        ("none", 4, 8, False),
    ],
)
def test_bit_settings_quantize_and_sample(pipeline_copy, method, wbits, abits, gptq):
    from tests.helpers import write_params

    write_params(
        pipeline_copy, {"quant": {"method": method, "weight": {"bits": wbits, "gptq": gptq}, "act": {"bits": abits}}}
    )
    run_stage("search")
    run_stage("quantize")
    run_stage("sample")
    run_stage("evaluate")
    m = json.loads((pipeline_copy / "metrics.json").read_text())
    if method == "none":
        assert m["psnr_fp"] == "inf" and m["size_mb"] == m["fp16_size_mb"]
    else:
        assert 15 < m["psnr_fp"] < 80
        assert (m["size_mb"] < m["fp16_size_mb"]) if wbits < 16 else (m["size_mb"] == m["fp16_size_mb"])


def test_model_stage_is_byte_identical_across_processes_and_hash_seeds(tmp_path):
    """Same params, two processes with different PYTHONHASHSEED: the same files, byte for byte
    (so DVC hashes, and everything downstream, do not change)."""
    import os
    import subprocess
    import sys

    from tests.helpers import REPO, write_params

    digests = []
    for seed in ("1", "2"):
        proj = tmp_path / seed
        proj.mkdir()
        write_params(proj, {"tracking": {"enabled": False}})
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed}
        proc = subprocess.run(
            [sys.executable, "-m", "stages.model"], cwd=proj, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        files = sorted(p for p in (proj / "data/model").rglob("*") if p.is_file())
        digests.append({str(p.relative_to(proj)): p.read_bytes() for p in files})
    assert digests[0].keys() == digests[1].keys() and len(digests[0]) == 7  # provenance.json too
    assert digests[0] == digests[1]


def test_evaluate_with_adm_statistics_only(pipeline_copy, capsys):
    """An ADM-style .npz with statistics and no images: FID and sFID from them, the image-based
    metrics null with a message; statistics of another feature size are refused, nothing written."""
    from pipeline.metrics.features import build_extractor, extract_all
    from pipeline.metrics.fid import statistics
    from pipeline.models.tiny import load_digits_images

    feats = extract_all(
        build_extractor("digits", pipeline_copy / "data/model"), load_digits_images()[0], 500, progress=False
    )
    np.savez(
        pipeline_copy / "stats.npz",
        mu=statistics(feats.pool)[0],
        sigma=statistics(feats.pool)[1],
        mu_s=statistics(feats.spatial)[0],
        sigma_s=statistics(feats.spatial)[1],
    )
    full = json.loads((pipeline_copy / "metrics.json").read_text())
    write_params(pipeline_copy, {"evaluate": {"reference": "stats.npz"}})
    run_stage("evaluate")
    m = json.loads((pipeline_copy / "metrics.json").read_text())
    assert m["fid"] == pytest.approx(full["fid"], rel=1e-6) and m["sfid"] == pytest.approx(full["sfid"], rel=1e-6)
    assert m["is"] == full["is"]
    assert m["kid"] is None and m["precision"] is None and m["recall_fp_model"] is None
    assert "kid, precision, recall" in capsys.readouterr().out

    (pipeline_copy / "metrics.json").unlink()
    np.savez(pipeline_copy / "inception.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    write_params(pipeline_copy, {"evaluate": {"reference": "inception.npz"}})
    with pytest.raises(SystemExit) as exit_info:
        run_stage("evaluate")
    assert exit_info.value.code == 2
    assert "'mu/sigma' statistics are 2048-d but the features are 128-d" in capsys.readouterr().err
    assert not (pipeline_copy / "metrics.json").exists()


def test_int8_backend_samples_the_fake_quant_images(pipeline_copy, built_pipeline, capsys):
    import mlflow

    write_params(pipeline_copy, {"quant": {"backend": "int8"}})
    run_stage("sample")
    fake = np.load(built_pipeline / "data/samples/images.npz")["images"].astype(int)
    integer = np.load(pipeline_copy / "data/samples/images.npz")["images"].astype(int)
    fp = np.load(built_pipeline / "data/samples_fp/images.npz")["images"].astype(int)
    # integer GEMMs give the fake path's numbers up to float rounding, far closer than FP is
    assert np.abs(integer - fake).mean() < 0.05 * np.abs(fake - fp).mean()
    assert json.loads((pipeline_copy / "data/samples/info.json").read_text())["backend"] == "int8"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{pipeline_copy / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("qdit").experiment_id])
    assert [r.data.params["quant.backend"] for r in runs if r.data.tags["qdit.stage"] == "sample"] == ["int8"]

    written = (pipeline_copy / "data/samples/images.npz").read_bytes()
    for backend, message in [
        ("fp4", "quant.backend = 'fp4' is not allowed; allowed: fake, int8, fp8, int4"),
        # the default plan is W4A8: fp8 computes W8A8 only
        (
            "fp8",
            "quant.backend = 'fp8': layer 'transformer_blocks.0.attn1.to_q' is W4A8; the fp8 backend computes W8A8",
        ),
    ]:
        write_params(pipeline_copy, {"quant": {"backend": backend}})
        with pytest.raises(SystemExit) as exit_:
            run_stage("sample")
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
        assert (pipeline_copy / "data/samples/images.npz").read_bytes() == written  # nothing written


@pytest.mark.parametrize(
    "artifact, stage, output, extra, fragment",
    [
        ("data/model/model.json", "calibrate", "data/calib", {}, "model description is corrupt"),
        (
            "data/model/transformer/diffusion_pytorch_model.safetensors",
            "calibrate",
            "data/calib",
            {},
            "FP model directory is incomplete or corrupt",
        ),
        ("data/calib/manifest.json", "stats", "data/stats", {}, "calibration manifest is corrupt"),
        (
            "data/stats/stats.safetensors",
            "search",
            "data/search",
            {"quant": {"act": {"mode": "static"}}},
            "activation statistics are corrupt",
        ),
        # half a plan may still parse as YAML; then its first unsupported value is named
        ("data/search/plan.yaml", "quantize", "data/quant", {}, "quantization plan"),
        ("data/quant/plan.yaml", "sample", "data/samples", {}, "quantization plan"),
        ("data/quant/quantized.safetensors", "sample", "data/samples", {}, "quantized checkpoint is corrupt"),
        ("data/quant/quant.json", "evaluate", "metrics.json", {}, "quantization summary is corrupt"),
        ("data/samples/images.npz", "evaluate", "metrics.json", {}, "image set is corrupt"),
    ],
)
def test_truncated_artifact_stops_its_consumer_naming_the_file(
    pipeline_copy, capsys, artifact, stage, output, extra, fragment
):
    import shutil

    write_params(pipeline_copy, extra)
    path = pipeline_copy / artifact
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    out = pipeline_copy / output
    shutil.rmtree(out) if out.is_dir() else out.unlink()
    with pytest.raises(SystemExit) as exit_:
        run_stage(stage)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert artifact in err and fragment in err
    assert len([line for line in err.splitlines() if line.startswith("error [")]) == 1
    assert not out.exists()
    assert not [p for p in (pipeline_copy / "data").iterdir() if p.name.startswith(".")]
