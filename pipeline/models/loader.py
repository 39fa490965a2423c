"""The FP model directory: what the `model` stage writes and every later stage reads.

Layout (diffusers conventions, so `DiTPipeline.from_pretrained` opens latent models as is):
    transformer/   DiTTransformer2DModel (config.json + safetensors)
    vae/           AutoencoderKL, latent models only
    scheduler/     the training noise schedule (scheduler_config.json)
    classifier/    digit feature net, embedded default only
    model.json     what we need to know about it: source, classes, image shape
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiTTransformer2DModel

from pipeline.errors import UserError


@dataclass
class FPModel:
    transformer: DiTTransformer2DModel
    vae: AutoencoderKL | None
    scheduler_config: dict
    info: dict

    @property
    def num_classes(self) -> int:
        return int(self.transformer.config.num_embeds_ada_norm)

    @property
    def null_label(self) -> int:
        # the label embedder's extra last row; DiTPipeline hard-codes 1000 for ImageNet
        return self.num_classes

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = self.transformer.config
        return (c.in_channels, c.sample_size, c.sample_size)


def _stable_config(config: dict) -> dict:
    """diffusers records `_use_default_values` in set order, which changes with the hash seed;
    sorted, the same model gives the same bytes (and the same DVC hash)."""
    config = dict(config)
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return config


def _stabilise(config_path: Path) -> None:
    config_path.write_text(json.dumps(_stable_config(json.loads(config_path.read_text())), indent=2, sort_keys=True))


def save_fp_model(
    out_dir: Path, transformer: DiTTransformer2DModel, vae: AutoencoderKL | None, scheduler_config: dict, info: dict
) -> None:
    transformer.save_pretrained(out_dir / "transformer")
    _stabilise(out_dir / "transformer" / "config.json")
    (out_dir / "scheduler").mkdir(parents=True, exist_ok=True)
    (out_dir / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(_stable_config(scheduler_config), indent=2, sort_keys=True)
    )
    cls_name = scheduler_config.get("_class_name", "DDPMScheduler")
    if vae is not None:
        vae.save_pretrained(out_dir / "vae")
        _stabilise(out_dir / "vae" / "config.json")
        (out_dir / "model_index.json").write_text(
            json.dumps(
                {
                    "_class_name": "DiTPipeline",
                    "transformer": ["diffusers", "DiTTransformer2DModel"],
                    "vae": ["diffusers", "AutoencoderKL"],
                    "scheduler": ["diffusers", cls_name],
                },
                indent=2,
            )
        )
    (out_dir / "model.json").write_text(json.dumps(info, indent=2, sort_keys=True))


def load_fp_model(model_dir: str | Path) -> FPModel:
    """Open the `model` stage's output, with a clear error when it is missing or damaged."""
    model_dir = Path(model_dir)
    info_path = model_dir / "model.json"
    if not info_path.is_file():
        raise UserError(f"{model_dir}: FP model not found (no model.json); run the `model` stage first")
    try:
        info = json.loads(info_path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{info_path}: model description is corrupt ({e}); rerun the `model` stage") from None
    try:
        transformer = DiTTransformer2DModel.from_pretrained(model_dir / "transformer")
        vae = AutoencoderKL.from_pretrained(model_dir / "vae") if info.get("latent") else None
        sched_cfg = json.loads((model_dir / "scheduler" / "scheduler_config.json").read_text())
    except Exception as e:
        raise UserError(
            f"{model_dir}: FP model directory is incomplete or corrupt ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); rerun the `model` stage"
        ) from None
    transformer.eval().requires_grad_(False)
    if vae is not None:
        vae.eval().requires_grad_(False)
    return FPModel(transformer, vae, sched_cfg, info)


def fetch_dit(source: str) -> tuple[DiTTransformer2DModel, AutoencoderKL, dict]:
    """Load a DiT, its VAE and its scheduler config from a local diffusers dir or a Hub id."""
    path = Path(source).expanduser()
    local = path.exists()
    if local:
        if not (path / "transformer" / "config.json").is_file():
            raise UserError(
                f"model.source = {source!r}: directory is not a diffusers DiT pipeline "
                "(expected transformer/, vae/ and scheduler/ subfolders, as in "
                "facebook/DiT-XL-2-256)"
            )
        where = str(path)
    elif source.count("/") == 1 and not source.startswith((".", "/", "~")):
        where = source  # Hub id; resolved from the local cache when offline
    else:
        raise UserError(
            f"model.source = {source!r}: no such directory, and not a Hugging Face Hub "
            "id (owner/name); allowed: 'tiny', a local diffusers DiT directory, or a Hub id"
        )
    try:
        transformer = DiTTransformer2DModel.from_pretrained(where, subfolder="transformer")
        vae = AutoencoderKL.from_pretrained(where, subfolder="vae")
        sched_cfg = dict(DDIMScheduler.load_config(where, subfolder="scheduler"))
    except UserError:
        raise
    except Exception as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
        if local:
            raise UserError(
                f"model.source = {source!r}: cannot load the DiT from this directory "
                f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
            ) from None
        raise UserError(
            f"model.source = {source!r}: cannot load it from the Hugging Face Hub"
            f"{' (HF_HUB_OFFLINE is set)' if offline else ' (no network, or not in the local cache)'}. "
            f"On a machine with internet run `huggingface-cli download {source} --local-dir "
            f"/path/to/{source.split('/')[-1]}`, copy the folder here and set model.source to that "
            "directory in params.yaml"
        ) from None
    transformer.eval().requires_grad_(False)
    vae.eval().requires_grad_(False)
    return transformer, vae, sched_cfg


def model_summary(transformer: DiTTransformer2DModel) -> dict:
    c = transformer.config
    return {
        "num_classes": int(c.num_embeds_ada_norm),
        "in_channels": int(c.in_channels),
        "out_channels": int(c.out_channels or c.in_channels),
        "sample_size": int(c.sample_size),
        "patch_size": int(c.patch_size),
        "num_layers": int(c.num_layers),
        "hidden_size": int(c.num_attention_heads * c.attention_head_dim),
        "parameters": sum(p.numel() for p in transformer.parameters()),
        "dtype": str(next(transformer.parameters()).dtype).replace("torch.", ""),
    }


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
