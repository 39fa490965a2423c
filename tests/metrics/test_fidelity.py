import math

import numpy as np
import pytest

from pipeline.metrics.fidelity import psnr, ssim


def _images(seed=0, n=6, size=8, c=1):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, c), dtype=np.uint8)


def test_identical_images():
    a = _images()
    assert math.isinf(psnr(a, a))
    assert ssim(a, a) == pytest.approx(1.0)


def test_psnr_of_a_known_error():
    a = np.full((2, 8, 8, 1), 100, dtype=np.uint8)
    b = a.copy()
    b[0] += 10  # image 0: MSE 100
    b[1] += 5  # image 1: MSE 25 -> the set: MSE 62.5
    assert psnr(b, a) == pytest.approx(10 * math.log10(255**2 / 62.5), rel=1e-6)  # float32 inside
    b[1] = a[1]  # one image identical: still finite
    assert psnr(b, a) == pytest.approx(10 * math.log10(255**2 / 50), rel=1e-6)


def test_ssim_falls_with_noise_and_fits_small_images():
    a = _images(size=8)
    noisy = np.clip(a.astype(int) + np.random.default_rng(1).integers(-40, 41, a.shape), 0, 255).astype(np.uint8)
    s = ssim(noisy, a)
    assert 0.0 < s < 0.99
    big = _images(size=32, c=3)
    assert ssim(big, big) == pytest.approx(1.0)


def test_chunked_metrics_equal_the_whole_set_at_once():
    import torch
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    from pipeline.metrics import fidelity

    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (fidelity.CHUNK * 2 + 5, 16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    whole_a, whole_b = (torch.from_numpy(x).permute(0, 3, 1, 2).double() for x in (a, b))
    # torchmetrics' PSNR sums in float32; ours sums the integer errors exactly
    assert psnr(a, b) == pytest.approx(float(peak_signal_noise_ratio(whole_a, whole_b, data_range=255.0)), rel=1e-6)
    # filtered in float32 per chunk against float64 on the whole set
    assert ssim(a, b) == pytest.approx(
        float(structural_similarity_index_measure(whole_a, whole_b, data_range=255.0, kernel_size=11)), rel=1e-6
    )
