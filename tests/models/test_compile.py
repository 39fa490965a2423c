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
}


def _rel(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).norm() / y.norm()) for x, y in zip(a, b))


@pytest.mark.parametrize("name", SETTINGS)
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
