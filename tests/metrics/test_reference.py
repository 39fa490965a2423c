import numpy as np
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.metrics.features import build_extractor
from pipeline.metrics.reference import load_reference


def test_digits_reference_and_shape_check():
    ref = load_reference("digits", (8, 8, 1))
    assert ref.shape == (1797, 8, 8, 1) and ref.dtype == np.uint8
    with pytest.raises(UserError, match="holds 8x8x1 images but the samples are 32x32x3"):
        load_reference("digits", (32, 32, 3))


def test_adm_npz_images_and_statistics(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=imgs)
    assert np.array_equal(load_reference(str(tmp_path / "ref.npz"), (16, 16, 3)), imgs)
    np.savez(tmp_path / "stats.npz", arr_0=imgs, mu=np.zeros(5), sigma=np.eye(5))
    mu, sigma = load_reference(str(tmp_path / "stats.npz"), (16, 16, 3))
    assert mu.shape == (5,) and sigma.shape == (5, 5)
    np.savez(tmp_path / "bad.npz", images=imgs)
    with pytest.raises(UserError, match="neither 'mu'/'sigma' nor 'arr_0'"):
        load_reference(str(tmp_path / "bad.npz"), (16, 16, 3))


def test_image_folder_is_cropped_and_resized(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), 50 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ref = load_reference(str(tmp_path), (16, 16, 3))
    assert ref.shape == (3, 16, 16, 3)
    assert ref[2].min() == ref[2].max() == 100
    (tmp_path / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match="broken.jpg: cannot read reference image"):
        load_reference(str(tmp_path), (16, 16, 3))


def test_missing_reference_is_named(tmp_path):
    with pytest.raises(UserError, match="no such file or directory"):
        load_reference(str(tmp_path / "VIRTUAL_imagenet256_labeled.npz"), (256, 256, 3))


def test_inception_without_the_extra_fails_clearly(tmp_path):
    try:
        import torch_fidelity  # noqa: F401
        pytest.skip("torch-fidelity is installed here")
    except ImportError:
        pass
    with pytest.raises(UserError, match=r"pip install -e '\.\[imagenet\]'"):
        build_extractor("inception", tmp_path)


def test_digit_features_need_the_classifier(tmp_path):
    with pytest.raises(UserError, match="digit classifier not found"):
        build_extractor("digits", tmp_path)
