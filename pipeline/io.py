"""Artifact I/O: atomic outputs, JSON, image sets and webdataset calibration shards.

Every artifact is written under a temporary name next to its target and renamed into place
at the end, so a killed stage never leaves a half output that DVC would cache.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError, first_line

_NO_SPACE = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}


def raise_if_no_space(e: OSError, target: Path) -> None:
    """A full disk (or quota, or file-size limit) while writing `target`: one clear message."""
    if e.errno in _NO_SPACE:
        raise UserError(
            f"could not write {target}: {e.strerror} (is the disk full?); nothing was written, "
            "free some space and rerun"
        ) from e


def remove_stale_temps(target: Path) -> None:
    """Delete what a killed writer of `target` left: its hidden temporary and replaced copies.
    One process writes an output at a time (DVC locks the workspace; under DDP only rank 0
    writes), so any such sibling is dead. DVC never caches them, but they pile up."""
    for pattern in (f".{target.name}.tmp-*", f".{target.name}.old-*"):
        for stale in target.parent.glob(pattern):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary directory that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except OSError as e:
        raise_if_no_space(e, target)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(target: str | Path, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file that replaces `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except OSError as e:
        raise_if_no_space(e, target)
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no inf/nan; "inf" keeps the fact readable
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return _jsonable(value.item())
    return value


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_file(path) as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
        f.write("\n")


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: {what} not found; run the stage that produces it (dvc repro)")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: {what} is corrupt ({e}); delete it and rerun `dvc repro`") from None


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- generated image sets -------------------------------------------------------------------

IMAGE_KEYS = ("images", "labels", "seeds")


def write_images(path: str | Path, images: np.ndarray, labels: np.ndarray, seeds: np.ndarray) -> None:
    """images: uint8 [N, H, W, C]; labels and per-image seeds: int64 [N]."""
    with atomic_file(path, "wb") as f:
        np.savez(f, images=images, labels=labels, seeds=seeds)


def read_images(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: image set not found; run the sampling stage first (dvc repro)")
    try:
        with np.load(path) as z:
            out = {k: z[k] for k in IMAGE_KEYS}
    except Exception as e:
        raise UserError(f"{path}: image set is corrupt or incomplete ({e}); rerun its stage") from None
    n = len(out["images"])
    if out["images"].dtype != np.uint8 or out["images"].ndim != 4 or len(out["labels"]) != n:
        raise UserError(
            f"{path}: image set has unexpected layout {out['images'].shape} "
            f"{out['images'].dtype}; expected uint8 [N, H, W, C] with N labels"
        )
    return out


# --- calibration shards (webdataset) --------------------------------------------------------


def write_calibration_shards(out_dir: Path, records: dict[str, np.ndarray], shard_size: int) -> list[dict]:
    """Write records (x [N,...] float32, t, y, step, trajectory int64 [N]) as tar shards.

    Returns one entry per shard: file name, record count and sha256, for the manifest.
    """
    import webdataset as wds

    n = len(records["x"])
    shards = []
    for start in range(0, n, shard_size):
        name = f"calib-{start // shard_size:06d}.tar"
        stop = min(start + shard_size, n)
        with wds.TarWriter(str(out_dir / name), mtime=0) as sink:  # fixed mtime: reproducible bytes
            for i in range(start, stop):
                sink.write(
                    {
                        "__key__": f"{i:08d}",
                        "x.npy": records["x"][i].astype(np.float32),
                        "t.cls": int(records["t"][i]),
                        "y.cls": int(records["y"][i]),
                        "step.cls": int(records["step"][i]),
                        "traj.cls": int(records["trajectory"][i]),
                    }
                )
        shards.append({"file": name, "count": stop - start, "sha256": sha256(out_dir / name)})
    return shards


def read_calibration(calib_dir: str | Path) -> tuple[dict[str, np.ndarray], dict]:
    """Read and verify the calibration set; returns (records, manifest)."""
    import webdataset as wds

    calib_dir = Path(calib_dir)
    manifest = read_json(calib_dir / "manifest.json", "calibration manifest")
    xs, cols = [], {k: [] for k in ("t", "y", "step", "trajectory")}
    for shard in manifest.get("shards", []):
        path = calib_dir / shard["file"]
        if not path.is_file():
            raise UserError(f"{path}: calibration shard listed in manifest.json is missing; rerun `calibrate`")
        if sha256(path) != shard["sha256"]:
            raise UserError(
                f"{path}: calibration shard is corrupt (checksum differs from manifest.json); rerun `calibrate`"
            )
        try:
            samples = list(wds.WebDataset(str(path), shardshuffle=False, empty_check=False).decode())
        except Exception as e:
            raise UserError(f"{path}: calibration shard cannot be read ({e}); rerun `calibrate`") from None
        if len(samples) != shard["count"]:
            raise UserError(f"{path}: holds {len(samples)} records, manifest.json says {shard['count']}")
        for s in samples:
            xs.append(s["x.npy"])
            cols["t"].append(s["t.cls"])
            cols["y"].append(s["y.cls"])
            cols["step"].append(s["step.cls"])
            cols["trajectory"].append(s["traj.cls"])
    if len(xs) != manifest.get("count"):
        raise UserError(f"{calib_dir}: {len(xs)} records found, manifest.json says {manifest.get('count')}")
    records = {"x": np.stack(xs)} | {k: np.asarray(v, dtype=np.int64) for k, v in cols.items()}
    return records, manifest


# --- safetensors ----------------------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict) -> None:
    """safetensors through memory, so a full disk is the OSError it is (the library reports a
    SafetensorError that atomic_dir could not tell from corruption)."""
    from safetensors.torch import save

    path.write_bytes(save({k: v.contiguous() for k, v in tensors.items()}))


def read_stats(stats_dir: str | Path) -> dict:
    """The `stats` stage's activation ranges, with clear errors when missing or damaged."""
    from safetensors.torch import load_file

    path = Path(stats_dir) / "stats.safetensors"
    if not path.is_file():
        raise UserError(f"{path}: not found; run the `stats` stage first (dvc repro)")
    try:
        state = load_file(str(path))
    except Exception as e:
        raise UserError(f"{path}: activation statistics are corrupt ({first_line(e)}); rerun `stats`") from None
    if "count" not in state or "timesteps" not in state:
        raise UserError(f"{path}: activation statistics lack 'count'/'timesteps'; rerun `stats`")
    return state
