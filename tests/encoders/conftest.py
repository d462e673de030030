"""Fixtures shared by the encoder tests: independent NumPy references and jaxpr inspection."""

import math

import chex
import jax
import numpy as np
import pytest

from tests import jaxprs

@pytest.fixture(params=["with_jit", "without_jit"])
def jit_variant(request):
  """Runs a test twice: as written, and with every `jax.jit` in it a no-op (`chex.fake_jit`), so a
  reference comparison holds both compiled and op by op."""
  if request.param == "with_jit":
    yield request.param
  else:
    with chex.fake_jit():
      seen = []
      jax.jit(lambda x: seen.append(type(x)) or x)(1.0)
      assert seen == [float], seen  # the function ran on the value itself, not traced
      yield request.param


@pytest.fixture
def count_remats():
  """``count_remats(f, *args)``: how many rematerialised regions the jaxpr of ``f(*args)`` holds."""
  return jaxprs.count_remats


def conv2d_reference(x, kernel, stride: int, padding) -> np.ndarray:
  x = np.asarray(x, np.float64)
  kernel = np.asarray(kernel, np.float64)
  (top, bottom), (left, right) = padding
  x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  kh, kw = kernel.shape[:2]
  rows = (x.shape[1] - kh) // stride + 1
  cols = (x.shape[2] - kw) // stride + 1
  out = np.zeros((x.shape[0], rows, cols, kernel.shape[-1]))
  for i in range(rows):
    for j in range(cols):
      window = x[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
      out[:, i, j] = np.tensordot(window, kernel, axes=([1, 2, 3], [0, 1, 2]))
  return out


@pytest.fixture
def conv2d():
  """NumPy float64 cross-correlation of NHWC images with an HWIO kernel, explicit padding
  ``((top, bottom), (left, right))``, written with explicit windows."""
  return conv2d_reference


def _assert_every_leaf_nonzero(tree) -> None:
  for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
    assert np.any(np.asarray(leaf) != 0), f"zero gradient for {jax.tree_util.keystr(path)}"


@pytest.fixture
def assert_every_leaf_nonzero():
  """Asserts that every leaf of a gradient pytree has a non-zero entry (the parameter is used)."""
  return _assert_every_leaf_nonzero


def gelu_reference(x):
  # The tanh approximation, Flax's default.
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm_reference(x, scale, bias, epsilon=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + epsilon) * scale + bias


@pytest.fixture
def numpy_layers():
  """float64 NumPy ``gelu`` (tanh approximation) and ``layer_norm(x, scale, bias, epsilon=1e-6)``."""
  return gelu_reference, layer_norm_reference
