"""Figures: sample grids and activation ranges across timesteps (PNG, matplotlib Agg)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.io import atomic_file


def image_grid(images_u8: np.ndarray, n: int, path: Path, min_side: int = 256) -> None:
    """First n*n images [N, H, W, C] as an n x n grid with 1-px grey gutters, upscaled (nearest)
    so that the grid is at least min_side pixels wide."""
    from PIL import Image

    n = max(1, min(n, int(np.sqrt(len(images_u8)))))
    _, h, w, c = images_u8.shape
    scale = max(1, -(-min_side // (n * w)))
    cells = images_u8[: n * n].repeat(scale, axis=1).repeat(scale, axis=2)
    cells = np.pad(cells, ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=128)
    hh, ww = cells.shape[1:3]
    grid = cells.reshape(n, n, hh, ww, c).transpose(0, 2, 1, 3, 4).reshape(n * hh, n * ww, c)
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    with atomic_file(path, "wb") as f:
        img.save(f, format="PNG")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def activation_ranges(ranges: dict[str, np.ndarray], timesteps: np.ndarray, path: Path, title: str) -> None:
    """One line per layer: max |x| over channels at each sampler timestep."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5))
    for name, r in ranges.items():
        ax.plot(timesteps, r, label=name, lw=1)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("max |activation| over channels")
    ax.set_yscale("log")
    ax.invert_xaxis()  # sampling runs from t = T down to 0
    ax.set_title(title)
    if len(ranges) <= 24:
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def top_channels(absmax: np.ndarray, timesteps: np.ndarray, layer: str, k: int, path: Path) -> list[int]:
    """The k channels of one layer with the largest |x|, across timesteps; returns their indices."""
    plt = _pyplot()
    peak = absmax.max(0)
    top = np.argsort(-peak)[:k]
    median = np.median(absmax, axis=1)
    fig, ax = plt.subplots(figsize=(9, 5))
    for ch in top:
        ax.plot(timesteps, absmax[:, ch], label=f"channel {ch}", lw=1.2)
    ax.plot(timesteps, median, "k--", label="median channel", lw=1)
    ax.set_xlabel("timestep t")
    ax.set_ylabel("max |activation|")
    ax.invert_xaxis()
    ax.set_title(f"{layer}: the {k} channels with the largest range")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return [int(c) for c in top]


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_file(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def group_sizes(layers: dict[str, int], path: Path, title: str) -> None:
    """The chosen group size of each layer: a block x layer-kind table when the names are
    `transformer_blocks.<i>.<kind>`, one row per layer otherwise. Colour is log2(g)."""
    plt = _pyplot()
    cells: dict[tuple[str, str], int] = {}
    for name, g in layers.items():
        parts = name.split(".")
        block, kind = (
            (parts[1], ".".join(parts[2:])) if parts[0] == "transformer_blocks" and len(parts) > 2 else ("-", name)
        )
        cells[(kind, block)] = g
    kinds = list(dict.fromkeys(k for k, _ in cells))
    blocks = sorted({b for _, b in cells}, key=lambda b: (not b.isdigit(), int(b) if b.isdigit() else 0, b))
    grid = np.full((len(kinds), len(blocks)), np.nan)
    for (k, b), g in cells.items():
        grid[kinds.index(k), blocks.index(b)] = np.log2(g)
    fig, ax = plt.subplots(figsize=(max(5, 0.45 * len(blocks) + 3), max(2.5, 0.4 * len(kinds) + 1.5)))
    im = ax.imshow(grid, cmap="viridis", aspect="auto")
    if len(blocks) * len(kinds) <= 400:
        for (k, b), g in cells.items():
            ax.text(blocks.index(b), kinds.index(k), str(g), ha="center", va="center", fontsize=7, color="w")
    ax.set_xticks(range(len(blocks)), blocks, fontsize=7)
    ax.set_yticks(range(len(kinds)), kinds, fontsize=7)
    ax.set_xlabel("transformer block")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="log2(group size)")
    _save(fig, path)


def search_progress(history: list[dict], base_fitness: float, fitness_name: str, path: Path) -> None:
    """Best and top-k mean fitness per generation, beside the base (uniform) plan's."""
    plt = _pyplot()
    gens = [h["generation"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(gens, [h["best"] for h in history], "o-", label="best so far")
    ax.plot(gens, [h["topk_mean"] for h in history], "s--", label="top-k mean")
    ax.plot(gens, [h["generation_mean"] for h in history], ":", color="grey", label="generation mean")
    ax.axhline(base_fitness, color="r", lw=1, label="uniform plan")
    ax.set_xlabel("generation")
    ax.set_ylabel(f"fitness ({fitness_name}, lower is better)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    _save(fig, path)


def metric_vs_bits(
    series: dict[str, dict[str, tuple[float, float]]],
    bits_order: list[str],
    fp: tuple[float, float] | None,
    path: Path,
    metrics: list[tuple[str, str]],
) -> None:
    """One panel per metric: mean +- std over seeds against the bit setting, one line per
    method; the FP model as a dashed band. series[metric][method] = {bits: (mean, std)}."""
    plt = _pyplot()
    from matplotlib.ticker import FuncFormatter, NullFormatter

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 3.8), squeeze=False)
    x = {b: i for i, b in enumerate(bits_order)}
    for ax, (key, title) in zip(axes[0], metrics):
        for method, points in series[key].items():
            bs = [b for b in bits_order if b in points]
            ax.errorbar(
                [x[b] for b in bs],
                [points[b][0] for b in bs],
                yerr=[points[b][1] for b in bs],
                marker="o",
                capsize=3,
                label=method,
            )
        if fp is not None and key == metrics[0][0]:
            ax.axhline(fp[0], color="k", ls="--", lw=1, label="FP")
            ax.axhspan(fp[0] - fp[1], fp[0] + fp[1], color="k", alpha=0.08)
        ax.set_xticks(range(len(bits_order)), bits_order)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("bit setting")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=8)
    _save(fig, path)


def group_sizes_by_setting(plans: dict[str, dict[str, int]], path: Path, title: str) -> None:
    """Searched group size of every layer (x) for each bit setting (one line each)."""
    plt = _pyplot()
    layers = list(dict.fromkeys(name for plan in plans.values() for name in plan))
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(layers) + 2), 3.8))
    for k, (label, plan) in enumerate(plans.items()):
        xs = [i for i, name in enumerate(layers) if name in plan]
        # a small vertical offset per setting keeps equal choices visible
        ax.plot(
            xs,
            [np.log2(plan[layers[i]]) + 0.06 * (k - (len(plans) - 1) / 2) for i in xs],
            marker="o",
            ms=4,
            lw=0.8,
            label=label,
        )
    short = [".".join(n.split(".")[1:]).replace("attn1.", "").replace("ff.net.", "ff") for n in layers]
    ax.set_xticks(range(len(layers)), short, rotation=90, fontsize=6)
    sizes = sorted({g for plan in plans.values() for g in plan.values()})
    ax.set_yticks([np.log2(g) for g in sizes], [str(g) for g in sizes])
    ax.set_ylabel("group size")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(fig, path)


def sample_panels(panels: dict[str, dict[str, np.ndarray]], columns: list[str], n: int, path: Path) -> None:
    """Rows (bit settings) x columns (FP and each method): the first n*n images of each, the
    same seeds in every cell, so a cell differs from FP only by quantization."""
    plt = _pyplot()
    rows = list(panels)
    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.9 * len(columns), 1.9 * len(rows) + 0.4), squeeze=False
    )
    for i, row in enumerate(rows):
        for j, col in enumerate(columns):
            ax = axes[i][j]
            ax.axis("off")
            if i == 0:
                ax.set_title(col, fontsize=9)
            images = panels[row].get(col)
            if images is None:
                continue
            k = max(1, min(n, int(np.sqrt(len(images)))))
            cells = np.pad(images[: k * k], ((0, 0), (0, 1), (0, 1), (0, 0)), constant_values=128)
            _, h, w, c = cells.shape
            grid = cells.reshape(k, k, h, w, c).transpose(0, 2, 1, 3, 4).reshape(k * h, k * w, c)
            ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, interpolation="nearest")
        axes[i][0].text(
            -0.08, 0.5, row, transform=axes[i][0].transAxes, rotation=90, ha="right", va="center", fontsize=9
        )
    _save(fig, path)
