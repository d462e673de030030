"""Cosine alignment and Deep CCA losses against float64 NumPy references (two ways of computing
canonical correlations), with masks, degenerate batches, with and without jit, grad and vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mmjax import losses
from tests.losses.conftest import raises_exactly


def cosine_reference(first, second):
  cosines = np.sum(first * second, 1) / (np.linalg.norm(first, axis=1) * np.linalg.norm(second, axis=1))
  return np.mean(1 - cosines)


def regularised_correlations(first, second, regularization):
  """Singular values of Σ₁₁^{-1/2} C₁₂ Σ₂₂^{-1/2} with Σᵢᵢ = Cᵢᵢ + r·(tr Cᵢᵢ / Dᵢ)·I, by eigh and SVD."""
  n = len(first)
  h1, h2 = first - first.mean(0), second - second.mean(0)

  def inverse_sqrt(covariance):
    values, vectors = np.linalg.eigh(covariance)
    return vectors @ np.diag(values**-0.5) @ vectors.T

  c11, c22 = h1.T @ h1 / (n - 1), h2.T @ h2 / (n - 1)
  s11 = c11 + regularization * np.trace(c11) / len(c11) * np.eye(len(c11))
  s22 = c22 + regularization * np.trace(c22) / len(c22) * np.eye(len(c22))
  s12 = h1.T @ h2 / (n - 1)
  return np.linalg.svd(inverse_sqrt(s11) @ s12 @ inverse_sqrt(s22), compute_uv=False)


def classical_correlations(first, second):
  """Hotelling's canonical correlations: cosines of the principal angles between the centred column spaces."""
  q1, _ = np.linalg.qr(first - first.mean(0))
  q2, _ = np.linalg.qr(second - second.mean(0))
  return np.linalg.svd(q1.T @ q2, compute_uv=False)


def _correlated_views(rng, n=200, widths=(3, 4), shared=2, noise=0.7):
  latent = rng.normal(size=(n, shared))
  first = latent @ rng.normal(size=(shared, widths[0])) + noise * rng.normal(size=(n, widths[0]))
  second = latent @ rng.normal(size=(shared, widths[1])) + noise * rng.normal(size=(n, widths[1]))
  return first, second


def test_cosine_alignment_matches_numpy_under_jit_and_vmap():
  rng = np.random.default_rng(0)
  first, second = rng.normal(size=(3, 7, 5)), rng.normal(size=(3, 7, 5))
  got = jax.jit(jax.vmap(losses.cosine_alignment_loss))(jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32))
  np.testing.assert_allclose(got, [cosine_reference(a, b) for a, b in zip(first, second)], rtol=1e-5)


def test_cosine_alignment_mask_and_zero_vectors():
  rng = np.random.default_rng(2)
  first, second = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  keep = np.array([1, 0, 1, 1, 0, 1], bool)
  padded = np.where(keep[:, None], first, 1e30), np.where(keep[:, None], second, -1e30)
  value, grads = jax.value_and_grad(losses.cosine_alignment_loss, argnums=(0, 1))(
      *(jnp.asarray(x, jnp.float32) for x in padded), mask=jnp.asarray(keep)
  )
  np.testing.assert_allclose(value, cosine_reference(first[keep], second[keep]), rtol=1e-5)
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~keep] == 0) and np.all(np.asarray(grad)[keep] != 0)
  zero = jax.value_and_grad(losses.cosine_alignment_loss)(jnp.zeros((2, 3)), jnp.ones((2, 3)))
  assert float(zero[0]) == 1.0 and np.all(np.isfinite(zero[1]))
  assert float(losses.cosine_alignment_loss(jnp.ones((2, 3)), jnp.ones((2, 3)), mask=jnp.zeros(2, bool))) == 0.0


def test_cosine_alignment_with_one_kept_pair_is_that_pair_s_distance():
  first, second = jnp.float32([[1.0, 0.0], [3.0, 4.0]]), jnp.float32([[0.0, 2.0], [4.0, 3.0]])
  for kept, distance in ((0, 1.0), (1, 1.0 - 24.0 / 25.0)):
    got = losses.cosine_alignment_loss(first, second, mask=jnp.arange(2) == kept)
    np.testing.assert_allclose(got, distance, rtol=1e-6)


_FLOAT32_LOSSES = {
    "cosine_alignment_loss": losses.cosine_alignment_loss,
    "canonical_correlations": losses.canonical_correlations,
    "cca_loss": losses.cca_loss,
}


@pytest.mark.parametrize("name", sorted(_FLOAT32_LOSSES))
def test_float64_and_bfloat16_views_are_computed_in_float32(name):
  """Under jax_enable_x64, float64 views give the float32 result of the same values bit for bit;
  bfloat16 views give the result of their float32 values."""
  fn = _FLOAT32_LOSSES[name]
  first, second = (jnp.float32(view) for view in _correlated_views(np.random.default_rng(9), n=16, widths=(4, 4)))
  want = fn(first, second)
  with jax.enable_x64(True):
    for cast in ((jnp.float64, jnp.float64), (jnp.float64, jnp.float32), (jnp.float32, jnp.float64)):
      got = fn(*(jnp.asarray(view, dtype) for view, dtype in zip((first, second), cast)))
      assert got.dtype == jnp.float32, cast
      np.testing.assert_array_equal(got, want, err_msg=str(cast))
  rounded = [view.astype(jnp.bfloat16) for view in (first, second)]
  np.testing.assert_array_equal(fn(*rounded), fn(*(view.astype(jnp.float32) for view in rounded)))


class AgainstReferenceTest(chex.TestCase):
  """Values and gradients against the float64 references, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_cosine_alignment_gradient_matches_finite_differences(self):
    rng = np.random.default_rng(1)
    first, second = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
    grad = self.variant(jax.grad(losses.cosine_alignment_loss))(jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32))
    numerical = np.zeros_like(first)
    for index in np.ndindex(first.shape):
      step = np.zeros_like(first)
      step[index] = 1e-6
      numerical[index] = (cosine_reference(first + step, second) - cosine_reference(first - step, second)) / 2e-6
    np.testing.assert_allclose(grad, numerical, rtol=1e-3, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((3, 4), (4, 2), (3, 3))
  def test_canonical_correlations_match_both_numpy_references(self, *widths):
    rng = np.random.default_rng(3)
    first, second = _correlated_views(rng, widths=widths)
    fn = self.variant(losses.canonical_correlations, static_argnames=("regularization", "epsilon"))
    got = fn(jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32), regularization=1e-3)
    chex.assert_shape(got, (min(widths),))
    np.testing.assert_allclose(got, regularised_correlations(first, second, 1e-3), rtol=1e-4)
    tiny = fn(jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32), regularization=1e-7)
    np.testing.assert_allclose(tiny, classical_correlations(first, second), rtol=1e-3, atol=1e-4)
    assert np.all(np.diff(np.asarray(got)) <= 0)


def test_cca_loss_sums_the_top_k_correlations_and_ignores_scale_and_invertible_maps():
  rng = np.random.default_rng(4)
  first, second = _correlated_views(rng)
  reference = regularised_correlations(first, second, 1e-3)
  for k in (1, 2, 3):
    got = losses.cca_loss(jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32), num_components=k)
    np.testing.assert_allclose(got, -reference[:k].sum(), rtol=1e-4)
  scaled = losses.cca_loss(jnp.asarray(first * 1e3, jnp.float32), jnp.asarray(second * 1e-3, jnp.float32))
  np.testing.assert_allclose(scaled, -reference.sum(), rtol=1e-4)
  # CCA is invariant to invertible linear maps of a view (up to the ridge).
  mixed = first @ rng.normal(size=(3, 3)) + 5.0
  np.testing.assert_allclose(
      losses.cca_loss(jnp.asarray(mixed, jnp.float32), jnp.asarray(second, jnp.float32), regularization=1e-7),
      -classical_correlations(first, second).sum(),
      rtol=1e-3,
  )


@pytest.mark.parametrize(
    "mask", [None, np.array([True, True, False, True, True, False, True]), np.array([False, True, False, False, True, False, False])]
)
def test_a_view_counts_as_constant_below_a_mean_variance_of_1e_20_over_n_minus_1(mask):
  """The documented threshold: the mean variance ``tr(C₁₁)/D₁`` divides by ``n − 1`` kept rows."""
  rng = np.random.default_rng(11)
  keep = np.ones(7, bool) if mask is None else mask
  first, second = _correlated_views(rng, n=7, widths=(2, 3))
  centred = np.where(keep[:, None], first - first[keep].mean(axis=0), 0.0)
  mean_variance = np.sum(centred**2) / ((keep.sum() - 1) * first.shape[1])

  def correlations(variance):
    view = first * np.sqrt(variance / mean_variance)
    return losses.canonical_correlations(jnp.float32(view), jnp.float32(second), mask=None if mask is None else jnp.asarray(mask))

  # Just above: scaled to unit mean variance, so the correlations are those of the unscaled views
  # (atol: with two kept rows the second is at the floor √epsilon, up to rounding).
  np.testing.assert_allclose(correlations(1.2e-20), correlations(1.0), rtol=1e-4, atol=1e-5)
  assert correlations(1.0)[0] > 0.1
  # Just below: left as it is, so the ridge swamps it and only the floor √epsilon is left.
  np.testing.assert_allclose(correlations(0.9e-20), np.full(2, np.sqrt(losses.correlation.DEFAULT_CCA_EPSILON)), rtol=1e-5)


@pytest.mark.parametrize("kept", [0, 1])
def test_fewer_than_two_kept_rows_carry_no_correlation(kept):
  first, second = _correlated_views(np.random.default_rng(12), n=5, widths=(2, 3))
  mask = jnp.arange(5) < kept
  got = losses.canonical_correlations(jnp.float32(first), jnp.float32(second), mask=mask)
  np.testing.assert_array_equal(got, np.full(2, np.sqrt(losses.correlation.DEFAULT_CCA_EPSILON), np.float32))
  assert losses.cca_loss(jnp.float32(first), jnp.float32(second), mask=mask) == 0.0


def test_cca_under_vmap_over_independent_problems():
  rng = np.random.default_rng(8)
  views = [_correlated_views(rng, n=30) for _ in range(3)]
  first, second = (jnp.asarray(np.stack(v), jnp.float32) for v in zip(*views))
  got = jax.jit(jax.vmap(losses.cca_loss))(first, second)
  np.testing.assert_allclose(got, [-regularised_correlations(a, b, 1e-3).sum() for a, b in views], rtol=1e-4)


def test_cca_gradient_matches_finite_differences_of_the_reference():
  rng = np.random.default_rng(5)
  first, second = _correlated_views(rng, n=12, widths=(2, 3))
  grads = jax.grad(lambda a, b: losses.cca_loss(a, b, regularization=0.1), argnums=(0, 1))(
      jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32)
  )

  def reference(a, b):
    return -regularised_correlations(a, b, 0.1).sum()

  for argnum, (grad, x) in enumerate(zip(grads, (first, second))):
    numerical = np.zeros_like(x)
    for index in np.ndindex(x.shape):
      step = np.zeros_like(x)
      step[index] = 1e-6
      args_plus, args_minus = [first, second], [first, second]
      args_plus[argnum], args_minus[argnum] = x + step, x - step
      numerical[index] = (reference(*args_plus) - reference(*args_minus)) / 2e-6
    np.testing.assert_allclose(grad, numerical, rtol=2e-3, atol=2e-4)
    assert np.all(np.asarray(grad) != 0)


def test_cca_mask_equals_the_loss_on_kept_rows():
  rng = np.random.default_rng(6)
  first, second = _correlated_views(rng, n=40)
  keep = rng.uniform(size=40) < 0.7
  padded = np.where(keep[:, None], first, 1e20), np.where(keep[:, None], second, -3e20)

  def loss(a, b):
    return losses.cca_loss(a, b, mask=jnp.asarray(keep))

  value, grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(*(jnp.asarray(x, jnp.float32) for x in padded))
  np.testing.assert_allclose(value, -regularised_correlations(first[keep], second[keep], 1e-3).sum(), rtol=1e-4)
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~keep] == 0)


def test_cca_loss_from_two_kept_rows_and_with_its_own_epsilon():
  """Two kept rows are enough for a correlation (the loss is minus their sum, not 0), and the
  `epsilon` passed to `cca_loss` is the floor its correlations use."""
  rng = np.random.default_rng(10)
  first, second = (jnp.float32(view) for view in _correlated_views(rng, n=6))
  two = jnp.arange(6) < 2
  correlations = losses.canonical_correlations(first, second, mask=two)
  loss = losses.cca_loss(first, second, mask=two)
  assert float(loss) < 0
  np.testing.assert_allclose(loss, -jnp.sum(correlations), rtol=1e-6)
  floored = losses.canonical_correlations(first, second, epsilon=0.81, mask=two)
  np.testing.assert_allclose(losses.cca_loss(first, second, epsilon=0.81, mask=two), -jnp.sum(floored), rtol=1e-6)
  assert float(jnp.min(floored)) == np.float32(0.9)


@pytest.mark.parametrize("case", ["constant batch", "one row", "all masked", "fewer rows than dimensions"])
def test_cca_is_finite_on_degenerate_batches(case):
  rng = np.random.default_rng(7)
  first, second = rng.normal(size=(6, 4)), rng.normal(size=(6, 3))
  mask = None
  if case == "constant batch":
    first, second = np.ones((6, 4)), np.ones((6, 3))
  elif case == "one row":
    mask = np.eye(6, dtype=bool)[0]
  elif case == "all masked":
    mask = np.zeros(6, bool)
  else:
    first, second = first[:3], second[:3]
  mask = None if mask is None else jnp.asarray(mask)
  value, grads = jax.value_and_grad(lambda a, b: losses.cca_loss(a, b, mask=mask), argnums=(0, 1))(
      jnp.asarray(first, jnp.float32), jnp.asarray(second, jnp.float32)
  )
  assert np.isfinite(value) and -3 <= float(value) <= 0
  for grad in grads:
    assert np.all(np.isfinite(grad))
  if case in ("one row", "all masked"):
    assert float(value) == 0.0


_z, _i = jnp.zeros, lambda shape: jnp.zeros(shape, jnp.int32)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: losses.cosine_alignment_loss(_z((4, 3)), _z((4, 2))), "cosine_alignment_loss: 'second' embeddings: expected shape (B, D) with B=4, D=3, got (4, 2)."),
        (lambda: losses.cosine_alignment_loss(_z((4,)), _z((4, 2))), "cosine_alignment_loss: 'first' embeddings: expected shape (B, D), got (4,)."),
        (lambda: losses.cosine_alignment_loss(_i((4, 3)), _z((4, 3))), "cosine_alignment_loss: 'first' embeddings: expected a float array, got int32."),
        (lambda: losses.cosine_alignment_loss(_z((4, 3)), _i((4, 3))), "cosine_alignment_loss: 'second' embeddings: expected a float array, got int32."),
        (lambda: losses.cosine_alignment_loss(_z((4, 3)), _z((4, 3)), mask=jnp.ones(3, bool)), "cosine_alignment_loss: mask: expected shape (B,) with B=4, got (3,)."),
        (lambda: losses.cosine_alignment_loss(_z((4, 3)), _z((4, 3)), mask=jnp.ones(4)), "cosine_alignment_loss: mask: expected a bool array, got float32."),
        (lambda: losses.canonical_correlations(_z((4, 3)), _z((5, 2))), "canonical_correlations: 'second' embeddings: expected shape (B, ?) with B=4, got (5, 2)."),
        (lambda: losses.canonical_correlations(_z((4, 3)), _z((4, 2)), mask=jnp.ones(4)), "canonical_correlations: mask: expected a bool array, got float32."),
        (lambda: losses.cca_loss(_z((4, 3)), _z((5, 2))), "cca_loss: 'second' embeddings: expected shape (B, ?) with B=4, got (5, 2)."),
        (lambda: losses.cca_loss(_z((4, 3)), _z((4, 2)), mask=jnp.ones(4)), "cca_loss: mask: expected a bool array, got float32."),
        (lambda: losses.cca_loss(_z((4, 3)), _z((4, 2)), num_components=3), "cca_loss: num_components: expected an int in [1, 2] (min(D₁, D₂)), got 3."),
        (lambda: losses.cca_loss(_z((4, 3)), _z((4, 2)), num_components=0), "cca_loss: num_components: expected an int in [1, 2] (min(D₁, D₂)), got 0."),
        (lambda: losses.cca_loss(_z((4, 3)), _z((4, 2)), num_components=1.0), "cca_loss: num_components: expected an int in [1, 2] (min(D₁, D₂)), got 1.0."),
    ],
)
def test_bad_inputs_raise_the_whole_message(call, message):
  with raises_exactly(message):
    call()
