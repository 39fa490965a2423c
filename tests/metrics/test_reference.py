import numpy as np
import pytest
from PIL import Image

from pipeline.errors import UserError
from pipeline.metrics.features import build_extractor
from pipeline.metrics.reference import load_reference


def test_digits_reference_and_shape_check():
    ref = load_reference("digits", (8, 8, 1)).images
    assert ref.shape == (1797, 8, 8, 1) and ref.dtype == np.uint8
    with pytest.raises(UserError, match="holds 8x8x1 images but the samples are 32x32x3"):
        load_reference("digits", (32, 32, 3))


def test_adm_npz_images_and_statistics(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", arr_0=imgs)
    ref = load_reference(str(tmp_path / "ref.npz"), (16, 16, 3))
    assert np.array_equal(ref.images, imgs) and ref.pool_stats is None and ref.spatial_stats is None
    # the ADM reference batch layout: images + pooled and spatial statistics of the whole set
    np.savez(tmp_path / "adm.npz", arr_0=imgs, mu=np.zeros(5), sigma=np.eye(5), mu_s=np.ones(3), sigma_s=np.eye(3))
    ref = load_reference(str(tmp_path / "adm.npz"), (16, 16, 3))
    assert np.array_equal(ref.images, imgs)
    assert ref.pool_stats[0].shape == (5,) and ref.pool_stats[1].shape == (5, 5)
    assert np.array_equal(ref.spatial_stats[0], np.ones(3)) and ref.spatial_stats[1].shape == (3, 3)
    np.savez(tmp_path / "stats.npz", mu=np.zeros(5), sigma=np.eye(5))
    ref = load_reference(str(tmp_path / "stats.npz"), (16, 16, 3))
    assert ref.images is None and ref.spatial_stats is None and ref.pool_stats[1].shape == (5, 5)
    np.savez(tmp_path / "bad.npz", images=imgs)
    with pytest.raises(UserError, match="neither 'mu'/'sigma' nor 'arr_0'"):
        load_reference(str(tmp_path / "bad.npz"), (16, 16, 3))
    np.savez(tmp_path / "badstats.npz", mu=np.zeros(5), sigma=np.eye(4))
    with pytest.raises(UserError, match=r"badstats.npz: 'mu/sigma' must be a vector \[D\] and a matrix \[D, D\]"):
        load_reference(str(tmp_path / "badstats.npz"), (16, 16, 3))
    (tmp_path / "trunc.npz").write_bytes((tmp_path / "adm.npz").read_bytes()[:100])
    with pytest.raises(UserError, match="trunc.npz: cannot read the reference .npz"):
        load_reference(str(tmp_path / "trunc.npz"), (16, 16, 3))


def test_image_folder_is_cropped_and_resized(tmp_path):
    for i in range(3):
        Image.fromarray(np.full((40, 60, 3), 50 * i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ref = load_reference(str(tmp_path), (16, 16, 3)).images
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
