import numpy as np
from PIL import Image

from pipeline.plots import image_grid


def test_grid_places_image_k_at_row_k_div_n_and_column_k_mod_n(tmp_path):
    images = np.arange(9, dtype=np.uint8).reshape(9, 1, 1, 1).repeat(2, 1).repeat(2, 2) * 20
    image_grid(images, 3, tmp_path / "g.png", min_side=6)
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape == (9, 9)  # 3 cells of 2 px + 1 px gutter
    for k in range(9):
        r, c = divmod(k, 3)
        assert (grid[r * 3 : r * 3 + 2, c * 3 : c * 3 + 2] == k * 20).all()
    assert grid[2, 0] == 128  # gutter


def test_grid_upscales_small_images_and_keeps_colour(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    image_grid(images, 10, tmp_path / "g.png")  # only 4 fit in a square: 2 x 2
    grid = np.asarray(Image.open(tmp_path / "g.png"))
    assert grid.shape[0] == grid.shape[1] >= 256 and grid.shape[2] == 3
