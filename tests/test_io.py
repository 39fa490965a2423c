import json

import numpy as np
import pytest

from pipeline.errors import UserError
from pipeline.io import (
    atomic_dir,
    read_calibration,
    read_images,
    read_json,
    write_calibration_shards,
    write_images,
    write_json,
)


def _records(n=7):
    rng = np.random.default_rng(0)
    return {
        "x": rng.standard_normal((n, 1, 8, 8)).astype(np.float32),
        "t": np.arange(n) * 10,
        "y": np.arange(n) % 3,
        "step": np.arange(n) % 4,
        "trajectory": np.arange(n),
    }


def test_atomic_dir_replaces_target_only_on_success(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "a").write_text("2")
            raise RuntimeError("killed half way")
    assert (target / "a").read_text() == "1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dirs left


def test_failed_first_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []


def test_shards_are_byte_reproducible(tmp_path):
    import time

    digests = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        digests.append([s["sha256"] for s in write_calibration_shards(tmp_path / name, _records(), 4)])
        time.sleep(1.1)  # tar headers would otherwise carry a different mtime
    assert digests[0] == digests[1]


def test_calibration_shards_round_trip(tmp_path):
    recs = _records()
    shards = write_calibration_shards(tmp_path, recs, shard_size=3)
    assert [s["count"] for s in shards] == [3, 3, 1]
    write_json(tmp_path / "manifest.json", {"count": 7, "shards": shards})
    back, manifest = read_calibration(tmp_path)
    for k, v in recs.items():
        np.testing.assert_array_equal(back[k], v)
    assert manifest["count"] == 7


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_shard_is_named(tmp_path, damage):
    shards = write_calibration_shards(tmp_path, _records(), shard_size=3)
    write_json(tmp_path / "manifest.json", {"count": 7, "shards": shards})
    victim = tmp_path / shards[1]["file"]
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        victim.write_bytes(data[:600] + bytes([data[600] ^ 0xFF]) + data[601:])
    else:
        victim.unlink()
    with pytest.raises(UserError, match=shards[1]["file"]):
        read_calibration(tmp_path)


def test_missing_and_corrupt_json(tmp_path):
    with pytest.raises(UserError, match="not found"):
        read_json(tmp_path / "manifest.json", "calibration manifest")
    (tmp_path / "m.json").write_text('{"count": ')
    with pytest.raises(UserError, match="corrupt"):
        read_json(tmp_path / "m.json", "calibration manifest")


def test_json_infinity_is_kept_readable(tmp_path):
    write_json(tmp_path / "m.json", {"psnr": float("inf"), "fid": 1.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"psnr": "inf", "fid": 1.5}


def test_image_set_round_trip_and_corruption(tmp_path):
    imgs = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 1), dtype=np.uint8)
    write_images(tmp_path / "i.npz", imgs, np.arange(5), np.arange(5) + 100)
    back = read_images(tmp_path / "i.npz")
    np.testing.assert_array_equal(back["images"], imgs)
    raw = (tmp_path / "i.npz").read_bytes()
    (tmp_path / "i.npz").write_bytes(raw[: len(raw) // 3])
    with pytest.raises(UserError, match="corrupt or incomplete"):
        read_images(tmp_path / "i.npz")
