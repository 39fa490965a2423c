"""Fidelity to the FP model: each image against the FP image generated from the same noise."""

from __future__ import annotations

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _nchw(images_u8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).double()


def psnr(images_u8: np.ndarray, reference_u8: np.ndarray) -> float:
    """PSNR (dB, peak 255) of the whole set: the squared error is averaged over every pixel of
    every image first, so a few images identical to FP do not make it infinite (a mean of
    per-image PSNRs would be); inf only when every image is identical."""
    return float(peak_signal_noise_ratio(_nchw(images_u8), _nchw(reference_u8), data_range=255.0))


def ssim(images_u8: np.ndarray, reference_u8: np.ndarray) -> float:
    """Mean SSIM; the Gaussian window shrinks to fit small images (7 on the 8x8 digits)."""
    size = min(images_u8.shape[1], images_u8.shape[2])
    kernel = min(11, size if size % 2 else size - 1)
    return float(structural_similarity_index_measure(
        _nchw(images_u8), _nchw(reference_u8), data_range=255.0, kernel_size=kernel))
