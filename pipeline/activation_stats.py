"""Per-timestep, per-channel ranges of every Linear input: the evidence for dynamic quantization.

Forward pre-hooks see each Linear's input [B, ..., C]; per row they reduce over tokens, then
scatter into one slot per sampler timestep, so any batch may mix timesteps. Pure torch.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.errors import require_finite


def linear_layers(model: nn.Module) -> dict[str, nn.Linear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}


class ActivationStats:
    """Accumulates min, max and abs-max per (timestep slot, input channel) for each Linear."""

    def __init__(self, model: nn.Module, num_slots: int):
        self.num_slots = num_slots
        self.layers = linear_layers(model)
        self.min: dict[str, torch.Tensor] = {}
        self.max: dict[str, torch.Tensor] = {}
        self.absmax: dict[str, torch.Tensor] = {}
        self._slots: torch.Tensor | None = None
        self._timestep: torch.Tensor | None = None
        for name, layer in self.layers.items():
            c = layer.in_features
            self.min[name] = torch.full((num_slots, c), float("inf"))
            self.max[name] = torch.full((num_slots, c), float("-inf"))
            self.absmax[name] = torch.zeros(num_slots, c)
        self._handles = [layer.register_forward_pre_hook(self._hook(name)) for name, layer in self.layers.items()]

    def set_slots(self, slots: torch.Tensor, timesteps: torch.Tensor) -> None:
        """Timestep slot (and value, for error messages) of each row of the next forward."""
        self._slots = slots.cpu().long()
        self._timestep = timesteps.cpu()

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            x = args[0].detach()
            rows = x.shape[0]
            x = x.reshape(rows, -1, x.shape[-1]).float()
            require_finite(
                x,
                self._timestep,
                "activation",
                f"at the input of layer '{name}'",
                "; the FP model or its calibration data is broken",
            )
            lo, hi = x.amin(1).cpu(), x.amax(1).cpu()
            index = self._slots[:rows, None].expand_as(lo)
            self.min[name].scatter_reduce_(0, index, lo, "amin")
            self.max[name].scatter_reduce_(0, index, hi, "amax")
            self.absmax[name].scatter_reduce_(0, index, torch.maximum(hi, -lo), "amax")

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def tensors(self) -> dict[str, torch.Tensor]:
        """Flat dict for safetensors: '<layer>/min' etc. [slots, C], plus '<layer>/<kind>_all' [C]
        over the slots that saw data."""
        out: dict[str, torch.Tensor] = {}
        for name in self.layers:
            seen = torch.isfinite(self.min[name][:, 0])
            out[f"{name}/min"] = self.min[name].clone()
            out[f"{name}/max"] = self.max[name].clone()
            out[f"{name}/absmax"] = self.absmax[name].clone()
            out[f"{name}/min_all"] = self.min[name][seen].amin(0)
            out[f"{name}/max_all"] = self.max[name][seen].amax(0)
            out[f"{name}/absmax_all"] = self.absmax[name][seen].amax(0)
        return out
