"""`sample.compile`: the compiled transformer gives eager's outputs, in one graph."""

import pytest
import torch

from pipeline.config import load_params
from pipeline.errors import UserError
from pipeline.models.compile import compile_transformer, graph_breaks
from pipeline.quant.apply import outputs
from pipeline.sampling import denoise, make_scheduler, to_uint8
from tests.helpers import REPO, ddim_scheduler
from tests.quant.test_apply import _batches, _model
from tests.quant.test_backends import _quantized

SETTINGS = {
    "fp": lambda: _model(),
    "fake W4A8": lambda: _quantized(weight_bits=4, act_bits=8),
    "int8 W8A8": lambda: _quantized("int8", weight_bits=8, act_bits=8, group_size=32),
    "fp8 W8A8": lambda: _quantized("fp8", weight_bits=8, act_bits=8),
}


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["fp", "fake W4A8", "int8 W8A8", "fp8 W8A8"])
def test_the_transformer_is_one_graph_without_breaks(name):
    report = graph_breaks(SETTINGS[name](), **_batches(1)[0])
    assert (report["graphs"], report["breaks"]) == (1, 0), report["reasons"]


@pytest.mark.parametrize("name, bound", [("fp", 1e-6), ("fake W4A8", 1e-5), ("int8 W8A8", 1e-5)])
def test_compiled_outputs_equal_eager_within_float_rounding(name, bound):
    batches = _batches(2)
    eager = outputs(SETTINGS[name](), batches)
    compiled = compile_transformer(SETTINGS[name](), "default")
    got = outputs(compiled, batches)
    # fused kernels round differently in the last bits (2.5e-7 here for all three); a
    # quantized model would show a flip to the next grid step as an error far above 1e-5
    assert _rel(got, eager) < bound
    torch._dynamo.reset()


def test_compiled_sampling_gives_eager_images_within_a_grey_level():
    torch.manual_seed(0)
    noise = torch.randn(4, 1, 8, 8)
    labels = torch.arange(4)
    sched = ddim_scheduler().config

    def images(model):
        x = denoise(model, make_scheduler("ddim", sched, 5), noise, labels, guidance_scale=1.0, null_label=10)
        return to_uint8((x / 2 + 0.5).clamp(0, 1)).int()

    model = _quantized(weight_bits=4, act_bits=8)
    eager = images(model)
    compiled = images(compile_transformer(model, "default"))
    torch._dynamo.reset()
    assert int((compiled - eager).abs().max()) <= 1


def test_eager_leaves_the_module_alone_and_a_bad_mode_is_refused(tmp_path):
    model = _model()
    forward = model.forward
    assert compile_transformer(model, "eager") is model and model.forward == forward
    with pytest.raises(ValueError):
        compile_transformer(model, "fast")
    with pytest.raises(UserError, match="sample.compile = 'fast' is not allowed; allowed: eager, default, "):
        load_params(REPO / "params.yaml", ["sample.compile=fast"])


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="the backends' CUDA paths need a GPU")


@CUDA
@pytest.mark.parametrize(
    "backend, plan_kw",
    [
        ("fake", dict(weight_bits=4, act_bits=8)),  # the Triton fake-quant kernels
        ("fp8", dict(weight_bits=8, act_bits=8)),  # torch._scaled_mm
        ("int4", dict(weight_bits=4, act_bits=16, group_size=32)),  # the packed int4 GEMM
    ],
)
def test_each_backend_compiles_on_cuda_without_breaks_and_matches_eager(backend, plan_kw):
    def model():
        return _quantized(None if backend == "fake" else backend, **plan_kw).to("cuda", torch.bfloat16)

    batch = {k: v.to("cuda") for k, v in _batches(1)[0].items()}
    batch["hidden_states"] = batch["hidden_states"].to(torch.bfloat16)
    report = graph_breaks(model(), **batch)
    assert report["breaks"] == 0, report["reasons"]
    eager = outputs(model(), [batch])
    got = outputs(compile_transformer(model(), "default"), [batch])
    torch._dynamo.reset()
    assert _rel([g.float() for g in got], [e.float() for e in eager]) < 2e-2  # bf16 rounding
