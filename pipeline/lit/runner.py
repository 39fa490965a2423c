"""Run a LightningModule's predict loop on one CPU or many devices and merge the results.

Each rank writes its predictions to a part file; after a barrier the process that launched the
run merges them by item index (DistributedSampler pads with repeats, which are dropped), so the
result is the same for any number of devices. Modules may also expose `reduced_state()`, a
collective that all ranks call at the end of the epoch; rank 0 saves what it returns.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, default_collate

from pipeline.errors import UserError
from pipeline.io import raise_if_no_space


class IndexDataset(Dataset):
    """Items are their own indices: image i or trajectory i, seeded by i alone."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


class _PartWriter(Callback):
    def __init__(self, parts_dir: Path, report: bool):
        self.parts_dir = parts_dir
        self.report = report
        self.buffer: list[dict[str, torch.Tensor]] = []

    def on_predict_epoch_start(self, trainer, pl_module):
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
            torch.cuda.reset_peak_memory_stats(pl_module.device)
        self.items, self.start = 0, time.perf_counter()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.items += len(torch.unique(batch)) if torch.is_tensor(batch) else len(batch)  # not the padding
        if outputs:
            self.buffer.append({k: v.detach().cpu() for k, v in outputs.items()})

    def _report(self, trainer, pl_module) -> None:
        """Per rank: the loop's own time (no process start or model load) and peak GPU memory,
        what multi-device scaling and memory are judged by."""
        cuda = pl_module.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize(pl_module.device)
        line = f"[predict] rank {trainer.global_rank}: {self.items} items in {time.perf_counter() - self.start:.2f} s"
        if cuda:
            line += f", peak GPU memory {torch.cuda.max_memory_allocated(pl_module.device) / 2**30:.2f} GiB"
        print(line, file=sys.stderr, flush=True)

    def on_predict_epoch_end(self, trainer, pl_module):
        if self.report:
            self._report(trainer, pl_module)
        state_fn = getattr(pl_module, "reduced_state", None)
        state = state_fn() if state_fn is not None else None  # collective: every rank, before anything can fail
        self.parts_dir.mkdir(parents=True, exist_ok=True)
        if self.buffer:
            merged = {k: torch.cat([b[k] for b in self.buffer]) for k in self.buffer[0]}
            _save(merged, self.parts_dir / f"rank{trainer.global_rank}.pt")
        if state is not None and trainer.is_global_zero:
            _save(state, self.parts_dir / "state.pt")
        self.buffer = []


def _save(obj, path: Path) -> None:
    """torch.save through memory, so a full disk surfaces as the OSError it is (torch's zip
    writer reports it as an opaque RuntimeError)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    try:
        path.write_bytes(buf.getbuffer())
    except OSError as e:
        raise_if_no_space(e, path.parent)
        raise


def _quiet_lightning() -> None:
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(
        lambda record: "litlogger" not in record.getMessage()
    )  # an advert, printed per stage
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")


def make_trainer(trainer_cfg, callbacks: list[Callback], progress: bool = True) -> L.Trainer:
    _quiet_lightning()
    try:
        return L.Trainer(
            accelerator=trainer_cfg.accelerator,
            devices=trainer_cfg.devices,
            strategy=trainer_cfg.strategy,
            precision=trainer_cfg.precision,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=callbacks,
            enable_progress_bar=progress,
        )
    except (ValueError, RuntimeError, TypeError) as e:
        raise UserError(f"trainer settings cannot be used on this machine: {e}") from None


def run_predict(
    module: L.LightningModule, dataset: Dataset, batch_size: int, trainer_cfg, parts_dir: Path, progress: bool = True
) -> tuple[dict[str, torch.Tensor] | None, Any, bool]:
    """Returns (predictions merged by index, reduced state, is_main_process).

    Only the main process gets results; other ranks get (None, None, False) and should exit.
    """
    if not progress:  # e.g. one call per search candidate: no device banner each time
        logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    launcher = os.environ.get("LOCAL_RANK", "0") == "0" and os.environ.get("NODE_RANK", "0") == "0"
    if launcher and parts_dir.exists():
        shutil.rmtree(parts_dir)  # leftovers of an interrupted run
    writer = _PartWriter(parts_dir, report=progress)
    trainer = make_trainer(trainer_cfg, [writer], progress)
    # pad to no more than a rank's share: padding a few images up to a large batch would waste
    # the compute that more devices are meant to save
    share = -(-len(dataset) // trainer.world_size)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_full_batch(min(batch_size, share)))
    trainer.predict(module, loader, return_predictions=False)
    trainer.strategy.barrier()
    if not trainer.is_global_zero:
        return None, None, False
    preds = _merge(sorted(parts_dir.glob("rank*.pt")))
    state_path = parts_dir / "state.pt"
    state = torch.load(state_path, weights_only=False) if state_path.exists() else None
    shutil.rmtree(parts_dir, ignore_errors=True)
    return preds, state, True


def _full_batch(batch_size: int):
    """Collate that pads a short batch to batch_size by repeating its last item. When every
    rank's share holds a whole batch, every forward then has the same shape on any number of
    devices, and float kernels, whose rounding can depend on the batch size, give the same
    bits. The repeats carry a repeated index, which _merge drops."""

    def collate(items):
        return default_collate(list(items) + [items[-1]] * (batch_size - len(items)))

    return collate


def is_main() -> bool:
    """Whether this is the main process (rank 0, or the only one)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def broadcast_from_main(value: Any) -> Any:
    """The main process's value on every process (a no-op without torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]
    return value


def _merge(files: list[Path]) -> dict[str, torch.Tensor] | None:
    if not files:
        return None
    parts = [torch.load(f, weights_only=True) for f in files]
    merged = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    index = merged["index"]
    order = torch.argsort(index, stable=True)
    index = index[order]
    keep = torch.ones_like(index, dtype=torch.bool)
    keep[1:] = index[1:] != index[:-1]  # drop the sampler's padding repeats
    return {k: v[order][keep] for k, v in merged.items()}
