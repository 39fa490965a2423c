"""`torch.compile` of a denoiser, and a count of what breaks its graph.

Eager PyTorch runs the work around each GEMM as separate kernels: the activation quantization
after a LayerNorm/modulation or GELU, the bias, the scales, the dtype casts. Inductor fuses them.
`reduce-overhead` and `max-autotune` add CUDA graphs, which pay where kernel launches dominate
(small batches). The module is compiled in place (`nn.Module.compile`), so its parameter names,
device moves and state dict stay the eager module's, and `.config` is still there.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.options import Compile


def compile_transformer(module: nn.Module, mode: str) -> nn.Module:
    """`module`, compiled in place unless mode is 'eager'. Shapes are static (dynamic=False):
    the sampler gives every forward the same batch, and a static graph is the faster one."""
    mode = Compile(mode)
    if mode is not Compile.EAGER:
        module.compile(mode=None if mode is Compile.DEFAULT else mode.value, dynamic=False)
    return module


def graph_breaks(module: nn.Module, **inputs) -> dict:
    """Graphs and graph breaks dynamo makes of one `module(**inputs)`, and why it broke."""
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(module)(**inputs)
    torch._dynamo.reset()
    return {
        "graphs": explained.graph_count,
        "breaks": explained.graph_break_count,
        "reasons": sorted({str(b.reason) for b in explained.break_reasons}),
    }
