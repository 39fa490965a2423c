"""Loading a quantized model for inference outside the pipeline."""

import copy

import numpy as np
import pytest
import torch
import yaml

from pipeline.errors import UserError
from pipeline.inference import QuantizedDiT, load_quantized_dit
from pipeline.models.loader import FPModel
from pipeline.quant.apply import linear_in_features, quantize
from pipeline.quant.plan import build_plan
from pipeline.quant.targets import DEFAULT_INCLUDE
from pipeline.seeds import generators
from tests.helpers import ddim_scheduler, latent_dit, tiny_vae


def test_generate_reproduces_the_sample_stage(built_pipeline):
    s = yaml.safe_load((built_pipeline / "params.yaml").read_text())["sample"]
    dit = load_quantized_dit(built_pipeline / "data/model", built_pipeline / "data/quant")
    stage = np.load(built_pipeline / "data/samples/images.npz")
    images = dit.generate(
        np.arange(s["num_images"]) % 10,
        steps=s["steps"],
        guidance_scale=s["guidance_scale"],
        seed=s["seed"],
        batch_size=s["batch_size"],
    )
    assert np.array_equal(images, stage["images"])
    with pytest.raises(UserError, match=r"class labels must lie in \[0, 9\]"):
        dit.generate([3, 10])
    with pytest.raises(UserError, match="no VAE"):
        dit.to_diffusers()


def _plan(model):
    return build_plan(
        linear_in_features(model),
        method="qdit",
        include=DEFAULT_INCLUDE,
        exclude=[],
        weight_bits=4,
        group_size=16,
        weight_symmetric=False,
        clip_search=False,
        gptq=False,
        act_bits=8,
        act_mode="auto",
        act_group_size=None,
        act_symmetric=False,
        attn_bits=16,
    )


def test_diffusers_pipeline_runs_the_quantized_transformer():
    torch.manual_seed(0)
    fp_transformer = latent_dit()
    gen = torch.Generator().manual_seed(3)
    for name, p in fp_transformer.named_parameters():  # a random DiT's adaLN is ~0: give it signal
        if "norm1.linear" in name or "proj_out" in name:
            p.data = torch.randn(p.shape, generator=gen) * 0.05
    sched = dict(ddim_scheduler().config)
    fp = FPModel(fp_transformer, tiny_vae(4), sched, {})
    fp_pipe = QuantizedDiT(fp, None).to_diffusers()
    labels = [3, 999, 17, 512]
    kw = dict(guidance_scale=1.5, num_inference_steps=6, output_type="pt")
    fp_ref = fp_pipe(labels, generator=generators(7, torch.arange(4)), **kw).images
    qmodel = copy.deepcopy(fp_transformer)
    plan = _plan(qmodel)
    dit = QuantizedDiT(FPModel(quantize(qmodel, plan), fp.vae, sched, {}), plan)
    pipe = dit.to_diffusers()
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(labels, generator=generators(7, torch.arange(4)), **kw).images
    ours = torch.from_numpy(dit.generate(labels, steps=6, guidance_scale=1.5, seed=7)).permute(0, 3, 1, 2) / 255
    assert ours.shape == ref.shape == (4, 3, 32, 32)
    assert (ours - ref).abs().max() <= 0.5 / 255 + 1e-5  # the same images, up to rounding to uint8
    assert (ref - fp_ref).abs().max() > 1e-3  # and they are the quantized model's, not the FP one's
