"""What the quantization library refuses, in its own terms: the layer and the requirement.

A caller that knows where a setting came from (the stages know params.yaml) catches these and
names its own keys; a library user sees the layer, the backend or the checkpoint key.
"""

from __future__ import annotations


class QuantError(Exception):
    """Base of every refusal of pipeline/quant."""


class PlanError(QuantError, ValueError):
    """A plan, or one setting of it, that the model or the quantizer cannot take."""


class BackendError(QuantError):
    """A backend this machine or this model's layers cannot run."""

    def __init__(self, backend: str, requirement: str, layer: str | None = None):
        self.backend, self.requirement, self.layer = backend, requirement, layer
        where = f"layer {layer!r} " if layer else ""
        super().__init__(f"{where}{requirement}")

    def __str__(self) -> str:
        return f"backend {self.backend!r}: {self.args[0]}"


class MissingRanges(QuantError):
    """A layer with static activation quantization or an input transform (smoothing, RepQ),
    and no activation statistics for it."""

    def __init__(self, layer: str):
        self.layer = layer
        super().__init__(
            f"layer {layer!r} needs activation statistics (for calibrated static ranges or for "
            "smoothing its input), and there is no entry for it"
        )


class StateError(QuantError):
    """A quantized state dict that does not fit the plan or the model."""


class NonFiniteError(QuantError):
    """NaN or Inf where the quantized model computes (named by layer and timestep)."""
