"""Soft-DTW against NumPy float64 dynamic programming (forward values and Cuturi & Blondel's backward
recursion for the alignment), finite differences, the γ → 0 limit and padding."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy.special import logsumexp

from mmjax.losses import pairwise_squared_distances, soft_dtw_alignment, soft_dtw_cost
from tests import jaxprs
from tests.losses.conftest import raises_exactly


def _forward(cost: np.ndarray, gamma: float) -> np.ndarray:
  """``R`` of size (n+1, m+1) with R[0, 0] = 0 and infinite borders (the paper's Algorithm 1)."""
  n, m = cost.shape
  r = np.full((n + 1, m + 1), np.inf)
  r[0, 0] = 0.0
  for i, j in itertools.product(range(1, n + 1), range(1, m + 1)):
    previous = np.array([r[i - 1, j - 1], r[i - 1, j], r[i, j - 1]])
    soft_min = -gamma * logsumexp(-previous / gamma) if gamma > 0 else previous.min()
    r[i, j] = cost[i - 1, j - 1] + soft_min
  return r


def reference_soft_dtw(cost: np.ndarray, gamma: float) -> float:
  return _forward(cost, gamma)[-1, -1]


def reference_alignment(cost: np.ndarray, gamma: float) -> np.ndarray:
  """The expected alignment by the paper's backward recursion (Algorithm 2), not by differentiation."""
  n, m = cost.shape
  r = np.pad(_forward(cost, gamma), ((0, 1), (0, 1)), constant_values=-np.inf)
  r[n + 1, m + 1] = r[n, m]
  d = np.pad(cost, ((1, 1), (1, 1)))  # d[i, j] = cost[i - 1, j - 1], zero on the borders
  e = np.zeros((n + 2, m + 2))
  e[n + 1, m + 1] = 1.0
  for j in range(m, 0, -1):
    for i in range(n, 0, -1):
      a = np.exp((r[i + 1, j] - r[i, j] - d[i + 1, j]) / gamma)
      b = np.exp((r[i, j + 1] - r[i, j] - d[i, j + 1]) / gamma)
      c = np.exp((r[i + 1, j + 1] - r[i, j] - d[i + 1, j + 1]) / gamma)
      e[i, j] = e[i + 1, j] * a + e[i, j + 1] * b + e[i + 1, j + 1] * c
  return e[1 : n + 1, 1 : m + 1]


def dtw_path(cost: np.ndarray) -> np.ndarray:
  """0/1 matrix of the optimal DTW path, by backtracking the hard recursion."""
  r = _forward(cost, 0.0)
  i, j = cost.shape
  path = np.zeros_like(cost)
  while (i, j) != (0, 0):
    path[i - 1, j - 1] = 1
    moves = {(i - 1, j - 1): r[i - 1, j - 1], (i - 1, j): r[i - 1, j], (i, j - 1): r[i, j - 1]}
    i, j = min(moves, key=moves.get)
  return path


def _costs(rng, batch, n, m) -> np.ndarray:
  x, y = rng.normal(size=(batch, n, 2)), rng.normal(size=(batch, m, 2))
  return ((x[:, :, None] - y[:, None]) ** 2).sum(-1)


class AgainstReferenceTest(chex.TestCase):
  """Values and gradients against the float64 references, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.1, 1.0, 10.0)
  def test_values_and_alignment_match_numpy_dynamic_programming(self, gamma):
    rng = np.random.default_rng(0)
    cost = _costs(rng, 3, 5, 7)
    want = np.array([reference_soft_dtw(c, gamma) for c in cost])
    want_alignment = np.stack([reference_alignment(c, gamma) for c in cost])
    got = self.variant(lambda c: soft_dtw_cost(c, gamma=gamma))(cost.astype(np.float32))
    chex.assert_shape(got, (3,))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    got = self.variant(lambda c: soft_dtw_alignment(c, gamma=gamma))(cost.astype(np.float32))
    chex.assert_shape(got, (3, 5, 7))
    np.testing.assert_allclose(got, want_alignment, atol=2e-5)
    with jax.enable_x64(True):
      np.testing.assert_allclose(soft_dtw_cost(jnp.asarray(cost), gamma=gamma), want, rtol=1e-12)
      np.testing.assert_allclose(soft_dtw_alignment(jnp.asarray(cost), gamma=gamma), want_alignment, atol=1e-12)


def test_gradient_matches_finite_differences():
  rng = np.random.default_rng(1)
  with jax.enable_x64(True):
    x, y = jnp.asarray(rng.normal(size=(2, 4, 3))), jnp.asarray(rng.normal(size=(2, 6, 3)))
    lengths = (jnp.array([4, 3]), jnp.array([6, 5]))

    def loss(x, y):
      cost = pairwise_squared_distances(x, y)
      return jnp.sum(soft_dtw_cost(cost, gamma=0.5, x_lengths=lengths[0], y_lengths=lengths[1]))

    grads = jax.grad(loss, argnums=(0, 1))(x, y)
    step = 1e-6
    probes = {0: [(0, 0, 0), (0, 3, 2), (1, 2, 1)], 1: [(0, 0, 0), (0, 5, 2), (1, 4, 1), (1, 2, 0)]}
    for which, array in enumerate((x, y)):
      for index in probes[which]:
        bump = jnp.zeros_like(array).at[index].set(step)
        shifted = [(x + bump, y), (x - bump, y)] if which == 0 else [(x, y + bump), (x, y - bump)]
        numeric = (loss(*shifted[0]) - loss(*shifted[1])) / (2 * step)
        np.testing.assert_allclose(grads[which][index], numeric, rtol=1e-6, atol=1e-9)
    # Padding gets no gradient.
    assert np.all(grads[0][1, 3:] == 0) and np.all(grads[1][1, 5:] == 0)


def test_small_gamma_approaches_dtw_within_the_bound():
  rng = np.random.default_rng(2)
  cost = _costs(rng, 4, 6, 5)
  dtw = np.array([reference_soft_dtw(c, 0.0) for c in cost])
  n, m = cost.shape[1:]
  for gamma in [1.0, 0.1, 0.01, 0.001]:
    value = np.asarray(soft_dtw_cost(cost.astype(np.float32), gamma=gamma))
    assert np.all(value <= dtw + 1e-5), gamma
    assert np.all(value >= dtw - gamma * np.log(3) * (n + m - 2) - 1e-5), gamma
  alignment = soft_dtw_alignment(cost.astype(np.float32), gamma=1e-3)
  np.testing.assert_allclose(alignment, np.stack([dtw_path(c) for c in cost]), atol=1e-3)


@pytest.mark.parametrize("padding", [1e30, np.inf, np.nan])
def test_padded_equals_unpadded_whatever_the_padding_holds(padding):
  rng = np.random.default_rng(3)
  lengths = [(3, 5), (6, 2), (1, 7), (6, 7)]
  padded = np.full((4, 6, 7), padding, np.float32)
  unpadded = []
  for b, (n, m) in enumerate(lengths):
    cost = _costs(rng, 1, n, m)[0].astype(np.float32)
    padded[b, :n, :m] = cost
    unpadded.append(cost)
  x_lengths, y_lengths = (jnp.array(v, jnp.int32) for v in zip(*lengths))

  @jax.jit
  def value_and_alignment(cost):
    return soft_dtw_cost(cost, x_lengths=x_lengths, y_lengths=y_lengths), soft_dtw_alignment(
        cost, x_lengths=x_lengths, y_lengths=y_lengths
    )

  value, alignment = value_and_alignment(padded)
  for b, (n, m) in enumerate(lengths):
    single = unpadded[b][None]
    np.testing.assert_allclose(value[b], soft_dtw_cost(single)[0], rtol=1e-6)
    np.testing.assert_allclose(alignment[b, :n, :m], soft_dtw_alignment(single)[0], atol=1e-6)
    assert np.all(alignment[b, n:] == 0) and np.all(alignment[b, :, m:] == 0)
    np.testing.assert_allclose([alignment[b, 0, 0], alignment[b, n - 1, m - 1]], [1, 1], atol=1e-6)
  assert np.all((np.asarray(alignment) >= -1e-6) & (np.asarray(alignment) <= 1 + 1e-6))


def test_lengths_below_one_count_as_one_and_above_the_padded_size_as_that_size():
  cost = jnp.asarray(_costs(np.random.default_rng(13), 2, 4, 5), jnp.float32)
  for fn in (soft_dtw_cost, soft_dtw_alignment):
    clipped = fn(cost, gamma=0.5, x_lengths=jnp.array([1, 4], jnp.int32), y_lengths=jnp.array([5, 1], jnp.int32))
    out_of_range = fn(cost, gamma=0.5, x_lengths=jnp.array([0, 9], jnp.int32), y_lengths=jnp.array([6, -3], jnp.int32))
    np.testing.assert_array_equal(out_of_range, clipped, err_msg=fn.__name__)


def test_narrow_integer_lengths_index_without_overflow():
  """int8 lengths of 100 + 100 cells: the last cell's diagonal, 198, does not fit in int8."""
  cost = jnp.asarray(_costs(np.random.default_rng(14), 1, 100, 100), jnp.float32)
  narrow = soft_dtw_cost(cost, gamma=0.5, x_lengths=jnp.array([100], jnp.int8), y_lengths=jnp.array([100], jnp.int8))
  np.testing.assert_array_equal(narrow, soft_dtw_cost(cost, gamma=0.5))


def test_the_recursion_scans_each_of_the_n_plus_m_minus_1_anti_diagonals_once():
  cost = jnp.zeros((2, 4, 7), jnp.float32)
  for fn in (soft_dtw_cost, soft_dtw_alignment):
    scans = [e for e in jaxprs.equations(jax.make_jaxpr(fn)(cost).jaxpr) if e.primitive.name == "scan"]
    assert scans and {e.params["length"] for e in scans} == {4 + 7 - 1}, fn.__name__


def test_vmap_over_a_leading_axis_matches_a_loop():
  cost = _costs(np.random.default_rng(4), 6, 4, 5).astype(np.float32).reshape(2, 3, 4, 5)
  lengths = jnp.array([[4, 2, 3], [1, 4, 4]], jnp.int32)
  batched = jax.jit(jax.vmap(lambda c, n: soft_dtw_cost(c, gamma=0.3, x_lengths=n)))(cost, lengths)
  for k in range(2):
    np.testing.assert_allclose(batched[k], soft_dtw_cost(cost[k], gamma=0.3, x_lengths=lengths[k]), rtol=1e-6)


def test_pairwise_squared_distances_against_numpy():
  rng = np.random.default_rng(5)
  x, y = rng.normal(size=(2, 3, 4)).astype(np.float32), rng.normal(size=(2, 5, 4)).astype(np.float32)
  want = ((x[:, :, None].astype(np.float64) - y[:, None]) ** 2).sum(-1)
  np.testing.assert_allclose(jax.jit(pairwise_squared_distances)(x, y), want, rtol=1e-5, atol=1e-5)
  assert float(pairwise_squared_distances(x[:, :1], x[:, :1]).min()) >= 0


def test_pairwise_squared_distances_computes_in_the_promoted_float_at_least_float32():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))
  low = {"bfloat16": jnp.bfloat16, "float32": jnp.float32}
  for x_dtype, y_dtype in [("bfloat16", "bfloat16"), ("bfloat16", "float32"), ("float32", "bfloat16")]:
    x_low, y_low = jnp.asarray(x, low[x_dtype]), jnp.asarray(y, low[y_dtype])
    got = pairwise_squared_distances(x_low, y_low)
    assert got.dtype == jnp.float32, (x_dtype, y_dtype)
    # Every product in float32, not bfloat16: bit for bit the result of the float32 values.
    np.testing.assert_array_equal(got, pairwise_squared_distances(x_low.astype(jnp.float32), y_low.astype(jnp.float32)))
  want = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
  with jax.enable_x64(True):
    assert pairwise_squared_distances(jnp.float32(x), jnp.float32(y)).dtype == jnp.float32
    for x_dtype, y_dtype in [(jnp.float64, jnp.float64), (jnp.float64, jnp.float32), (jnp.float32, jnp.float64)]:
      got = pairwise_squared_distances(jnp.asarray(x, x_dtype), jnp.asarray(y, y_dtype))
      assert got.dtype == jnp.float64, (x_dtype, y_dtype)
      np.testing.assert_allclose(got, want, rtol=1e-6)


def test_cost_and_alignment_are_computed_in_at_least_float32():
  """bfloat16 costs give the float32 results of their values bit for bit; under jax_enable_x64,
  float32 costs stay float32 and float64 costs float64."""
  cost = _costs(np.random.default_rng(8), 2, 3, 4)
  rounded = jnp.asarray(cost, jnp.bfloat16)
  for fn in (soft_dtw_cost, soft_dtw_alignment):
    got = fn(rounded, gamma=0.5)
    assert got.dtype == jnp.float32, fn.__name__
    np.testing.assert_array_equal(got, fn(rounded.astype(jnp.float32), gamma=0.5))
  with jax.enable_x64(True):
    for fn in (soft_dtw_cost, soft_dtw_alignment):
      single = fn(jnp.float32(cost), gamma=0.5)
      assert single.dtype == jnp.float32, fn.__name__
      np.testing.assert_array_equal(single, fn(jnp.float32(cost), gamma=0.5))
    np.testing.assert_allclose(soft_dtw_cost(jnp.asarray(cost), gamma=0.5), [reference_soft_dtw(c, 0.5) for c in cost], rtol=1e-12)
    alignment = soft_dtw_alignment(jnp.asarray(cost), gamma=0.5)
    assert alignment.dtype == jnp.float64
    np.testing.assert_allclose(alignment, [reference_alignment(c, 0.5) for c in cost], atol=1e-12)


def test_gamma_defaults_to_one():
  cost = _costs(np.random.default_rng(7), 2, 3, 4)
  np.testing.assert_allclose(soft_dtw_cost(jnp.float32(cost)), [reference_soft_dtw(c, 1.0) for c in cost], rtol=1e-5)
  np.testing.assert_allclose(soft_dtw_alignment(jnp.float32(cost)), [reference_alignment(c, 1.0) for c in cost], atol=2e-5)


_z, _i = jnp.zeros, lambda shape: jnp.zeros(shape, jnp.int32)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: soft_dtw_cost(_z((3, 4))), "soft_dtw_cost: cost: expected shape (B, ?, ?), got (3, 4)."),
        (lambda: soft_dtw_cost(_i((2, 3, 4))), "soft_dtw_cost: cost: expected a float array, got int32."),
        (lambda: soft_dtw_cost(_z((2, 3, 4)), x_lengths=_i(3)), "soft_dtw_cost: x_lengths: expected shape (B,) with B=2, got (3,)."),
        (lambda: soft_dtw_cost(_z((2, 3, 4)), x_lengths=_z(2)), "soft_dtw_cost: x_lengths: expected an int array, got float32."),
        (lambda: soft_dtw_cost(_z((2, 3, 4)), y_lengths=_i(3)), "soft_dtw_cost: y_lengths: expected shape (B,) with B=2, got (3,)."),
        (lambda: soft_dtw_cost(_z((2, 3, 4)), y_lengths=_z(2)), "soft_dtw_cost: y_lengths: expected an int array, got float32."),
        (lambda: soft_dtw_cost(_z((2, 3, 4)), gamma=0.0), "soft_dtw_cost: gamma must be positive, got 0.0."),
        (lambda: soft_dtw_alignment(_z((2, 3, 4)), gamma=-1.0), "soft_dtw_alignment: gamma must be positive, got -1.0."),
        (lambda: soft_dtw_alignment(_z((3, 4))), "soft_dtw_alignment: cost: expected shape (B, ?, ?), got (3, 4)."),
        (lambda: soft_dtw_alignment(_i((2, 3, 4))), "soft_dtw_alignment: cost: expected a float array, got int32."),
        (lambda: soft_dtw_alignment(_z((2, 3, 4)), x_lengths=_i(3)), "soft_dtw_alignment: x_lengths: expected shape (B,) with B=2, got (3,)."),
        (lambda: soft_dtw_alignment(_z((2, 3, 4)), x_lengths=_z(2)), "soft_dtw_alignment: x_lengths: expected an int array, got float32."),
        (lambda: soft_dtw_alignment(_z((2, 3, 4)), y_lengths=_i(3)), "soft_dtw_alignment: y_lengths: expected shape (B,) with B=2, got (3,)."),
        (lambda: soft_dtw_alignment(_z((2, 3, 4)), y_lengths=_z(2)), "soft_dtw_alignment: y_lengths: expected an int array, got float32."),
        (lambda: pairwise_squared_distances(_z((3, 4)), _z((2, 3, 4))), "pairwise_squared_distances: x: expected shape (B, ?, D), got (3, 4)."),
        (lambda: pairwise_squared_distances(_z((2, 3, 4)), _z((2, 3, 5))), "pairwise_squared_distances: y: expected shape (B, ?, D) with B=2, D=4, got (2, 3, 5)."),
        (lambda: pairwise_squared_distances(_i((2, 3, 4)), _z((2, 3, 4))), "pairwise_squared_distances: x: expected a float array, got int32."),
        (lambda: pairwise_squared_distances(_z((2, 3, 4)), _i((2, 3, 4))), "pairwise_squared_distances: y: expected a float array, got int32."),
    ],
)
def test_bad_inputs_raise_the_whole_message(call, message):
  with raises_exactly(message):
    call()
