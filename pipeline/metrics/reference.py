"""Reference sets for the distribution metrics: the digits, an ADM `.npz`, or an image folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def load_reference(reference: str, image_shape: tuple[int, int, int]) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """uint8 images [N, H, W, C] at the samples' size, or precomputed (mu, sigma).

    `digits`: all 1797 scikit-learn digits. A `.npz`: the ADM reference-batch format, with
    `mu` and `sigma` (precomputed Inception statistics, used as is) or `arr_0` (images).
    A directory: every image in it, centre-cropped and resized to the samples' size.
    """
    if reference == "digits":
        from pipeline.models.tiny import load_digits_images

        images, _ = load_digits_images()
        if images.shape[1:] != tuple(image_shape):
            raise UserError(f"evaluate.reference = 'digits' holds 8x8x1 images but the samples are "
                            f"{'x'.join(map(str, image_shape))}; set evaluate.reference to an image "
                            "folder or an ADM .npz for this model")
        return images
    path = Path(reference).expanduser()
    if not path.exists():
        raise UserError(f"evaluate.reference = {reference!r}: no such file or directory; allowed: "
                        "'digits', an ADM reference batch (.npz) or a folder of images")
    if path.is_file():
        return _from_npz(path)
    return _from_folder(path, image_shape)


def _from_npz(path: Path):
    try:
        with np.load(path) as z:
            keys = set(z.keys())
            if {"mu", "sigma"} <= keys:
                return z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            if "arr_0" in keys:
                images = z["arr_0"]
            else:
                raise UserError(f"{path}: reference .npz has neither 'mu'/'sigma' nor 'arr_0' "
                                f"(found {sorted(keys)})")
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: cannot read the reference .npz ({e})") from None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise UserError(f"{path}: 'arr_0' must be uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    return images


def _from_folder(path: Path, image_shape) -> np.ndarray:
    from PIL import Image

    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 2:
        raise UserError(f"{path}: reference folder holds {len(files)} images ({', '.join(IMAGE_SUFFIXES)}); "
                        "FID needs at least 2")
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
