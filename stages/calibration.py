"""What the stages that run calibration records through the FP model share (stats, search,
quantize): the records, checked against the model, and as model inputs."""

from __future__ import annotations

from pipeline.errors import UserError
from stages.common import CALIB, MODEL


def read_calibration_for(fp) -> tuple[dict, dict]:
    """The calibration records, checked to fit the FP model they will run through."""
    from pipeline.io import read_calibration

    records, manifest = read_calibration(CALIB)
    if manifest["x_shape"] != list(fp.latent_shape):
        raise UserError(
            f"{CALIB}: calibration samples have shape {manifest['x_shape']}, the model in "
            f"{MODEL} expects {list(fp.latent_shape)}; rerun `calibrate` for this model"
        )
    return records, manifest


def calibration_batches(fp, device, batch_size: int) -> list[dict]:
    """The calibration records as model inputs (doubled for guidance when it was used)."""
    import torch

    from pipeline.sampling import guided_inputs

    records, manifest = read_calibration_for(fp)
    dtype = next(fp.transformer.parameters()).dtype
    x, t, y = (torch.from_numpy(records[k]) for k in ("x", "t", "y"))
    batches = []
    for i in range(0, len(x), batch_size):
        kw = guided_inputs(
            x[i : i + batch_size],
            t[i : i + batch_size],
            y[i : i + batch_size],
            manifest["guidance_scale"] > 1.0,
            fp.null_label,
        )
        batches.append({k: v.to(device, dtype if k == "hidden_states" else None) for k, v in kw.items()})
    return batches
