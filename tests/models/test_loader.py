import pytest
import torch

from pipeline.errors import UserError
from pipeline.models.loader import fetch_dit, load_fp_model, model_summary, save_fp_model
from tests.helpers import latent_dit, save_latent_pipeline


def test_hub_id_offline_says_how_to_use_a_local_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError) as err:
        fetch_dit("facebook/DiT-XL-2-256")
    msg = str(err.value)
    assert "model.source = 'facebook/DiT-XL-2-256'" in msg
    assert "huggingface-cli download facebook/DiT-XL-2-256 --local-dir" in msg
    assert "set model.source to that directory" in msg


@pytest.mark.parametrize(
    "source, fragment",
    [
        ("./no/such/dir", "no such directory"),
        ("not-a-hub-id", "no such directory, and not a Hugging Face Hub id"),
    ],
)
def test_bad_sources(source, fragment):
    with pytest.raises(UserError, match=fragment):
        fetch_dit(source)


def test_directory_without_transformer_is_refused(tmp_path):
    with pytest.raises(UserError, match="not a diffusers DiT pipeline"):
        fetch_dit(str(tmp_path))


def test_local_pipeline_round_trip(tmp_path):
    src = save_latent_pipeline(tmp_path / "src", latent_dit())
    transformer, vae, sched_cfg = fetch_dit(str(src))
    save_fp_model(
        tmp_path / "model",
        transformer,
        vae,
        sched_cfg,
        {"source": str(src), "latent": True, **model_summary(transformer)},
    )
    fp = load_fp_model(tmp_path / "model")
    assert fp.num_classes == 1000 and fp.null_label == 1000
    assert fp.latent_shape == (4, 4, 4)
    assert fp.vae is not None and not fp.transformer.training
    assert fp.scheduler_config["_class_name"] == "DDIMScheduler"
    for a, b in zip(fp.transformer.parameters(), transformer.parameters()):
        assert torch.equal(a, b)
    # the output is itself a diffusers DiT pipeline directory
    from diffusers import DiTPipeline

    assert DiTPipeline.from_pretrained(tmp_path / "model").transformer.config.num_layers == 2


def test_missing_or_damaged_model_dir(tmp_path):
    with pytest.raises(UserError, match="FP model not found"):
        load_fp_model(tmp_path)
    src = save_latent_pipeline(tmp_path / "src", latent_dit())
    transformer, vae, sched_cfg = fetch_dit(str(src))
    save_fp_model(tmp_path / "model", transformer, vae, sched_cfg, {"source": "x", "latent": True})
    weights = tmp_path / "model" / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match="incomplete or corrupt"):
        load_fp_model(tmp_path / "model")
