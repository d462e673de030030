"""Image grids: every image lands at its cell, scaled into uint8, with a grey background."""

import numpy as np
import pytest

from mmjax.eval.images import image_grid


def test_each_image_lands_in_its_cell_scaled_to_uint8():
  images = np.random.default_rng(0).uniform(-1, 1, (7, 3, 2, 3))
  grid = image_grid(images, columns=3, value_range=(-1.0, 1.0), padding=2)
  assert grid.shape == (3 * 5 + 2, 3 * 4 + 2, 3) and grid.dtype == np.uint8
  for index, image in enumerate(images):
    top, left = 2 + (index // 3) * 5, 2 + (index % 3) * 4
    np.testing.assert_array_equal(grid[top : top + 3, left : left + 2], np.round((image + 1) / 2 * 255))
  assert (grid[2 + 2 * 5 :, 2 + 4 :] == 128).all()  # the two empty cells of the last row


def test_uint8_images_are_kept_and_default_range_is_the_images_own():
  images = np.arange(16, dtype=np.uint8).reshape(1, 4, 4, 1)
  np.testing.assert_array_equal(image_grid(images, columns=1, padding=0), images[0])
  stretched = image_grid(np.linspace(2.0, 3.0, 4).reshape(1, 2, 2, 1), columns=1, padding=0)
  assert stretched.min() == 0 and stretched.max() == 255


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match=r"image_grid: images: expected shape \(\?, \?, \?, \?\), got \(4, 4\)"):
    image_grid(np.zeros((4, 4)), columns=2)
