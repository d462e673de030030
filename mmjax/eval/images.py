"""Image grids of samples, reconstructions and cross-generations, for PNG files and TensorBoard.

An evaluation that returns a uint8 ``[H, W, C]`` array under some key has it written as
``images/<step>/<key>.png`` and logged to TensorBoard by the training loop.
"""

import numpy as np

from mmjax import checks


def image_grid(
    images, columns: int, value_range: tuple[float, float] | None = None, padding: int = 1
) -> np.ndarray:
  """Tiles ``[N, H, W, C]`` images row by row into one uint8 ``[rows·(H+p)+p, columns·(W+p)+p, C]``
  image on a mid-grey background.

  Args:
    images: float images (any range) or uint8 images.
    columns: images per row; the last row is padded with background.
    value_range: the values shown as black and white; None: the images' own min and max (uint8
      images are shown as they are).
    padding: pixels of background between and around images.

  Returns:
    The grid, ``uint8`` with the images' channel count.

  >>> grid = image_grid(np.zeros((5, 4, 4, 1)), columns=3, value_range=(0.0, 1.0))
  >>> grid.shape, grid.dtype, int(grid[1, 1, 0]), int(grid[0, 0, 0])
  ((11, 16, 1), dtype('uint8'), 0, 128)
  """
  images = np.asarray(images)
  checks.check_shape("image_grid: images", images, (None, None, None, None))
  if columns < 1:
    raise ValueError(f"image_grid: columns must be at least 1, got {columns}.")
  if images.dtype != np.uint8:
    low, high = value_range if value_range is not None else (float(images.min()), float(images.max()))
    scaled = (images.astype(np.float64) - low) / max(high - low, 1e-12)
    images = np.round(np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)
  count, height, width, channels = images.shape
  rows = -(-count // columns)
  grid = np.full((rows * (height + padding) + padding, columns * (width + padding) + padding, channels), 128, np.uint8)
  for index, image in enumerate(images):
    top = padding + (index // columns) * (height + padding)
    left = padding + (index % columns) * (width + padding)
    grid[top : top + height, left : left + width] = image
  return grid
