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
