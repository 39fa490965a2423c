"""Builders shared by the tests: small latent DiTs with a VAE, fast parameter files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml
from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

REPO = Path(__file__).resolve().parents[1]


def tiny_vae(latent_size: int) -> AutoencoderKL:
    """A 4-channel VAE with an 8x downsampling factor, like the SD VAE, but tiny."""
    torch.manual_seed(1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 8, 8),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=latent_size * 8,
    )
    vae.config.scaling_factor = 0.18215
    return vae.eval()


def latent_dit(
    num_layers: int = 2,
    heads: int = 2,
    head_dim: int = 16,
    sample_size: int = 4,
    num_classes: int = 1000,
    seed: int = 0,
) -> DiTTransformer2DModel:
    """A 1000-class latent DiT with learned sigma (out_channels 8), as DiT-XL/2, but small.
    adaLN weights are randomised (diffusers' init makes a random DiT nearly an identity)."""
    torch.manual_seed(seed)
    model = DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=head_dim,
        in_channels=4,
        out_channels=8,
        num_layers=num_layers,
        sample_size=sample_size,
        patch_size=2,
        num_embeds_ada_norm=num_classes,
    )
    return model.eval()


def xl_config_dit() -> DiTTransformer2DModel:
    """DiT-XL/2 256 config (28 blocks, hidden 1152, 16 heads, 32x32x4 latents), random weights."""
    return latent_dit(num_layers=28, heads=16, head_dim=72, sample_size=32)


def ddim_scheduler() -> DDIMScheduler:
    # the schedule of facebook/DiT-XL-2-256
    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False
    )


def save_latent_pipeline(path: Path, transformer: DiTTransformer2DModel) -> Path:
    """A local diffusers DiT pipeline directory, as `huggingface-cli download` would leave it."""
    pipe = DiTPipeline(
        transformer=transformer, vae=tiny_vae(transformer.config.sample_size), scheduler=ddim_scheduler()
    )
    pipe.save_pretrained(path)
    return path


FAST = {
    "model": {
        "tiny": {"num_layers": 2, "train_steps": 60, "batch_size": 64, "warmup_steps": 10},
        "classifier": {"epochs": 3},
    },
    "calibrate": {"num_samples": 24, "steps": 6, "batch_size": 8},
    "stats": {"batch_size": 8},
    "search": {
        "population": 6,
        "top_k": 3,
        "mutations": 3,
        "crossovers": 3,
        "generations": 2,
        "num_images": 16,
        "steps": 4,
        "batch_size": 8,
    },
    "sample": {"num_images": 24, "steps": 5, "batch_size": 10, "grid_size": 4},
    "evaluate": {"batch_size": 16},
    "trainer": {"accelerator": "cpu", "devices": 1},
}


def deep_update(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out.get(k, {}), v) if isinstance(v, dict) else v
    return out


def write_params(project: Path, extra: dict | None = None, base: dict | None = None) -> Path:
    """params.yaml = the repository's defaults, overlaid with `base` (FAST) and `extra`."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_update(params, FAST if base is None else base)
    params = deep_update(params, extra or {})
    params["tracking"]["uri"] = f"sqlite:///{project / 'mlflow.db'}"
    path = project / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def sh(cmd: str, cwd: Path, env: dict) -> str:
    """A shell command that must succeed; its output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800, shell=True)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def git_project(tmp_path: Path, extra: dict | None = None) -> tuple[Path, dict]:
    """A committed git + DVC copy of the project with FAST params, and the environment to run
    dvc in it (this Python first on PATH)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for item in ("pipeline", "stages", "dvc.yaml", ".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, proj / item, ignore=shutil.ignore_patterns("__pycache__", "tmp"))
        elif src.exists():
            (proj / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, proj / item)
    write_params(proj, extra)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(proj),
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@t",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }
    env.pop("QDIT_TRACKING_URI", None)
    sh("git init -q && git add -A && git commit -qm init", proj, env)
    return proj, env
