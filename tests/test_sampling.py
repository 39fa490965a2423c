import pytest
import torch
from diffusers import DiTPipeline

from pipeline.models import tiny
from pipeline.sampling import decode, denoise, make_scheduler
from pipeline.seeds import generators, initial_noise
from tests.helpers import ddim_scheduler, latent_dit, tiny_vae


def _randomise_adaln(model):
    # diffusers initialises adaLN/proj_out so that a random DiT is far from a real one; make
    # every path carry signal so the comparison can fail
    gen = torch.Generator().manual_seed(3)
    for name, p in model.named_parameters():
        if "norm1.linear" in name or "proj_out" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.05
    return model


@pytest.mark.parametrize("guidance", [1.0, 1.5, 4.0])
def test_matches_diffusers_dit_pipeline(guidance):
    transformer = _randomise_adaln(latent_dit())
    pipe = DiTPipeline(transformer=transformer, vae=tiny_vae(4), scheduler=ddim_scheduler())
    pipe.set_progress_bar_config(disable=True)
    labels = [3, 999, 17, 512]
    ref = pipe(
        labels,
        guidance_scale=guidance,
        generator=generators(7, torch.arange(4)),
        num_inference_steps=8,
        output_type="pt",
    ).images
    gens = generators(7, torch.arange(4))
    noise = initial_noise(gens, (4, 4, 4), torch.float32)
    sched = make_scheduler("ddim", dict(pipe.scheduler.config), 8)
    x0 = denoise(transformer, sched, noise, torch.tensor(labels), guidance_scale=guidance, null_label=1000, gens=gens)
    ours = decode(x0, pipe.vae)
    assert ours.shape == ref.shape == (4, 3, 32, 32)
    assert (ours - ref).abs().max() < 1e-5
    # the comparison is not vacuous: another seed gives other images
    other = decode(
        denoise(
            transformer,
            make_scheduler("ddim", dict(pipe.scheduler.config), 8),
            initial_noise(generators(8, torch.arange(4)), (4, 4, 4), torch.float32),
            torch.tensor(labels),
            guidance_scale=guidance,
            null_label=1000,
        ),
        pipe.vae,
    )
    assert (other - ref).abs().max() > 1e-3


def test_guidance_changes_the_latents():
    transformer = _randomise_adaln(latent_dit())
    cfg = dict(ddim_scheduler().config)
    noise = initial_noise(generators(0, torch.arange(2)), (4, 4, 4), torch.float32)
    runs = [
        denoise(
            transformer, make_scheduler("ddim", cfg, 5), noise, torch.tensor([1, 2]), guidance_scale=g, null_label=1000
        )
        for g in (1.0, 3.0)
    ]
    assert (runs[0] - runs[1]).abs().max() > 1e-3


@pytest.mark.parametrize("scheduler", ["ddim", "ddpm", "dpm_solver"])
def test_image_depends_on_its_seed_only_not_on_batching(scheduler):
    torch.manual_seed(0)
    model = _randomise_adaln(tiny.build_tiny_dit(1, 2, 16, 2)).eval()
    cfg = dict(tiny.noise_scheduler().config)
    index = torch.arange(6)
    labels = index % 10

    def run(ix):
        gens = generators(5, ix)
        noise = initial_noise(gens, (1, 8, 8), torch.float32)
        return denoise(
            model, make_scheduler(scheduler, cfg, 6), noise, labels[ix], guidance_scale=2.0, null_label=10, gens=gens
        )

    whole = run(index)
    parts = torch.cat([run(index[:2]), run(index[2:5]), run(index[5:])])
    assert torch.allclose(whole, parts, atol=1e-6)
    assert not torch.allclose(whole[0], whole[1])


def test_null_label_is_the_models_class_count():
    """A 10-class model has no label 1000 (DiTPipeline's hard-coded one): its null label is 10,
    the label embedder's extra last row, as the loaded model says."""
    from pipeline.models.loader import FPModel
    from tests.helpers import latent_dit

    torch.manual_seed(0)
    model = tiny.build_tiny_dit(1, 2, 16, 2).eval()
    cfg = dict(tiny.noise_scheduler().config)
    null = FPModel(model, None, cfg, {}).null_label
    assert null == 10 == model.transformer_blocks[0].norm1.emb.class_embedder.embedding_table.num_embeddings - 1
    assert FPModel(latent_dit(num_layers=1), None, cfg, {}).null_label == 1000  # DiT-XL/2's
    noise = initial_noise(generators(0, torch.arange(2)), (1, 8, 8), torch.float32)
    out = denoise(
        model, make_scheduler("ddim", cfg, 3), noise, torch.tensor([1, 2]), guidance_scale=1.5, null_label=null
    )
    assert torch.isfinite(out).all()
    with pytest.raises(IndexError):
        denoise(model, make_scheduler("ddim", cfg, 3), noise, torch.tensor([1, 2]), guidance_scale=1.5, null_label=1000)
