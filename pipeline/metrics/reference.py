"""Reference sets for the distribution metrics: the digits, an ADM `.npz`, or an image folder."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


Stats = tuple[np.ndarray, np.ndarray]


@dataclass
class Reference:
    """Real images and/or precomputed feature statistics (mean, covariance).

    An ADM reference batch holds both: 10,000 images (for KID and precision/recall) and the
    statistics of the whole data set, pooled (`mu`, `sigma`: FID) and spatial (`mu_s`,
    `sigma_s`: sFID), which take precedence over statistics of the images.
    """

    images: np.ndarray | None = None
    pool_stats: Stats | None = None
    spatial_stats: Stats | None = None


def load_reference(reference: str, image_shape: tuple[int, int, int]) -> Reference:
    """The reference set named by `evaluate.reference`, images at the samples' size.

    `digits`: all 1797 scikit-learn digits. A `.npz`: the ADM reference-batch format, with
    `arr_0` (uint8 images [N, H, W, C]) and/or `mu`, `sigma` (and `mu_s`, `sigma_s`).
    A directory: every image in it, centre-cropped and resized to the samples' size.
    """
    if reference == "digits":
        from pipeline.models.tiny import load_digits_images

        images, _ = load_digits_images()
        if images.shape[1:] != tuple(image_shape):
            raise UserError(
                f"evaluate.reference = 'digits' holds 8x8x1 images but the samples are "
                f"{'x'.join(map(str, image_shape))}; set evaluate.reference to an image "
                "folder or an ADM .npz for this model"
            )
        return Reference(images=images)
    path = Path(reference).expanduser()
    if not path.exists():
        raise UserError(
            f"evaluate.reference = {reference!r}: no such file or directory; allowed: "
            "'digits', an ADM reference batch (.npz) or a folder of images"
        )
    if path.is_file():
        return _from_npz(path)
    return Reference(images=_from_folder(path, image_shape))


def _from_npz(path: Path) -> Reference:
    try:
        with np.load(path) as z:
            keys = set(z.keys())
            if not ({"mu", "sigma"} <= keys or "arr_0" in keys):
                raise UserError(f"{path}: reference .npz has neither 'mu'/'sigma' nor 'arr_0' (found {sorted(keys)})")
            ref = Reference(images=z["arr_0"] if "arr_0" in keys else None)
            if {"mu", "sigma"} <= keys:
                ref.pool_stats = (z["mu"].astype(np.float64), z["sigma"].astype(np.float64))
            if {"mu_s", "sigma_s"} <= keys:
                ref.spatial_stats = (z["mu_s"].astype(np.float64), z["sigma_s"].astype(np.float64))
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: cannot read the reference .npz ({e})") from None
    images = ref.images
    if images is not None and (images.dtype != np.uint8 or images.ndim != 4):
        raise UserError(f"{path}: 'arr_0' must be uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    for name, stats in (("mu/sigma", ref.pool_stats), ("mu_s/sigma_s", ref.spatial_stats)):
        if stats is not None and (stats[0].ndim != 1 or stats[1].shape != (len(stats[0]),) * 2):
            raise UserError(
                f"{path}: '{name}' must be a vector [D] and a matrix [D, D], got {stats[0].shape} and {stats[1].shape}"
            )
    return ref


def _from_folder(path: Path, image_shape) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UserError(
            f"{path}: reference folder holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); FID needs at least 2"
        )
    h, w, c = image_shape
    out = np.empty((len(files), h, w, c), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            img = Image.open(f).convert("L" if c == 1 else "RGB")
        except Exception as e:
            raise UserError(f"{f}: cannot read reference image ({e})") from None
        side = min(img.size)
        left, top = (img.width - side) // 2, (img.height - side) // 2
        img = img.crop((left, top, left + side, top + side)).resize((w, h), Image.BICUBIC)
        arr = np.asarray(img, dtype=np.uint8)
        out[i] = arr[..., None] if c == 1 else arr
    return out
