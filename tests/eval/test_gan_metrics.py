"""GAN readouts against hand-computed cases and a brute-force NumPy reference."""

import itertools

import numpy as np
import pytest

from mmjax.eval import gan


def test_conditional_accuracy_and_pair_consistency_by_hand():
  assert gan.conditional_accuracy([1, 2, 3, 4], [1, 2, 0, 0]) == 0.5
  assert gan.pair_consistency([0, 0, 0, 1, 1], [0, 1, 0, 1, 0]) == pytest.approx(3 / 5)


def test_mean_pairwise_distance_matches_brute_force():
  x = np.random.default_rng(0).normal(size=(7, 3, 2))
  pairs = [np.linalg.norm(a.ravel() - b.ravel()) for a, b in itertools.permutations(x, 2)]
  assert gan.mean_pairwise_distance(x) == pytest.approx(np.mean(pairs), rel=1e-9)


def test_diversity_ratio_is_one_for_real_data_and_zero_under_mode_collapse():
  rng = np.random.default_rng(1)
  real, classes = rng.normal(size=(40, 4)), np.repeat(np.arange(4), 10)
  assert gan.diversity_ratio(real, classes, real, classes, 4) == pytest.approx(1.0)
  collapsed = np.repeat(real[::10], 10, axis=0)  # one sample per class, repeated
  assert gan.diversity_ratio(collapsed, classes, real, classes, 4) == 0.0
  # Twice the spread in class 0 only: (2 + 1 + 1 + 1) / 4.
  scaled = real.copy()
  scaled[:10] *= 2
  assert gan.diversity_ratio(scaled, classes, real, classes, 4) == pytest.approx(5 / 4)


def test_class_grid_puts_one_class_per_row():
  images = np.zeros((2, 3, 2, 2, 1))
  images[1] = 1.0
  grid = gan.class_grid(images)
  assert grid.shape == (7, 10, 1) and grid.dtype == np.uint8
  assert grid[1, 1, 0] == 0 and grid[4, 1, 0] == 255


@pytest.mark.parametrize("call, message", [
    (lambda: gan.conditional_accuracy([1, 2], [1]), "requested"),
    (lambda: gan.pair_consistency([[1]], [1]), "first"),
    (lambda: gan.mean_pairwise_distance(np.zeros((1, 3))), "N >= 2"),
    (lambda: gan.diversity_ratio(np.zeros((2, 3)), [0, 0], np.zeros((2, 4)), [0, 0], 1), r"generated: expected shape \(N, 4\)"),
])
def test_bad_inputs_raise_value_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
