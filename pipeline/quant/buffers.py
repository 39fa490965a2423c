"""Quantization parameters keep their dtype when a model is cast to bf16/fp16.

`model.to(torch.bfloat16)` (and Lightning's bf16-true precision) casts every floating buffer.
A bf16 scale loses 3 of float16's mantissa bits, a bf16 timestep cannot hold 981, and FP8
weights would stop being FP8, so the buffers named in `_keep_dtype` follow the module's device
but never its dtype.
"""

from __future__ import annotations

import torch.nn as nn


class KeepDtypeBuffers(nn.Module):
    _keep_dtype: tuple[str, ...] = ()

    def _apply(self, fn, recurse=True):
        kept = {k: self._buffers.pop(k) for k in self._keep_dtype if self._buffers.get(k) is not None}
        try:
            super()._apply(fn, recurse)
        finally:
            for k, v in kept.items():
                probe = fn(v[:0])  # an empty slice tells where fn sends tensors
                self._buffers[k] = v.to(probe.device)
        return self
