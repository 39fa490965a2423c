"""LightningModule that runs the FP model over calibration records and collects activation ranges."""

from __future__ import annotations

import lightning as L
import torch
import torch.distributed as dist

from pipeline.activation_stats import ActivationStats
from pipeline.models.loader import FPModel
from pipeline.sampling import guided_inputs


class StatsModule(L.LightningModule):
    """Each record (x_t, t, y) passes through the model as the sampler would see it: with the
    null label beside it when the calibration used classifier-free guidance."""

    def __init__(self, fp: FPModel, records: dict[str, torch.Tensor], num_slots: int, guided: bool):
        super().__init__()
        self.transformer = fp.transformer
        self.records = records
        self.guided = guided
        self.null_label = fp.null_label
        self.collector = ActivationStats(self.transformer, num_slots)

    def predict_step(self, index: torch.Tensor) -> dict:
        index = index.cpu()
        dtype = next(self.transformer.parameters()).dtype
        kw = guided_inputs(
            self.records["x"][index], self.records["t"][index], self.records["y"][index], self.guided, self.null_label
        )
        slots = self.records["step"][index]
        self.collector.set_slots(torch.cat([slots, slots]) if self.guided else slots, kw["timestep"])
        self.transformer(**{k: v.to(self.device, dtype if k == "hidden_states" else None) for k, v in kw.items()})
        return {}

    def reduced_state(self) -> dict[str, torch.Tensor]:
        """Min/max over all ranks' records."""
        c = self.collector
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            backend_device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            for table, op in ((c.min, dist.ReduceOp.MIN), (c.max, dist.ReduceOp.MAX), (c.absmax, dist.ReduceOp.MAX)):
                for name in table:
                    t = table[name].to(backend_device)
                    dist.all_reduce(t, op=op)
                    table[name] = t.cpu()
        c.remove()
        return c.tensors()
