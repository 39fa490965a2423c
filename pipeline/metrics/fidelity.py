"""Fidelity to the FP model: each image against the FP image generated from the same noise.

Both metrics run over chunks of images: a float64 copy of 10,000 images of 256x256 is 16 GB,
and SSIM's filtering makes several of those at once.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torchmetrics.functional.image import structural_similarity_index_measure

CHUNK = 64  # images at a time


def _nchw(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).double()


def _chunks(images_u8: np.ndarray, reference_u8: np.ndarray):
    for i in range(0, len(images_u8), CHUNK):
        yield _nchw(images_u8[i : i + CHUNK]), _nchw(reference_u8[i : i + CHUNK])


def psnr(images_u8: np.ndarray, reference_u8: np.ndarray) -> float:
    """PSNR (dB, peak 255) of the whole set: the squared error is averaged over every pixel of
    every image first, so a few images identical to FP do not make it infinite (a mean of
    per-image PSNRs would be); inf only when every image is identical."""
    # squared differences of uint8 values are integers: float64 sums them exactly
    sse = sum(float(((a - b) ** 2).sum()) for a, b in _chunks(images_u8, reference_u8))
    mse = sse / images_u8.size
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def ssim(images_u8: np.ndarray, reference_u8: np.ndarray) -> float:
    """Mean SSIM; the Gaussian window shrinks to fit small images (7 on the 8x8 digits).
    Filtered in float32 (per-image values within 1e-6 of float64): CPU convolutions in float64
    are about 35x slower, minutes for 10,000 images of 256x256."""
    size = min(images_u8.shape[1], images_u8.shape[2])
    kernel = min(11, size if size % 2 else size - 1)
    per_image = [
        structural_similarity_index_measure(
            a.float(), b.float(), data_range=255.0, kernel_size=kernel, reduction="none"
        )
        for a, b in _chunks(images_u8, reference_u8)
    ]
    return float(torch.cat(per_image).double().mean())
