"""Products and mixtures of experts against float64 NumPy references; presence masks with garbage
in the absent experts; extreme log-variances; stratified selection; MoPoE subsets; jit, grad, vmap."""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mmjax.fusion import experts
from mmjax.losses import DiagonalLaplace


def poe_reference(means, log_variances, present=None, prior=True):
  """Precision-weighted product in float64, expert by expert."""
  num_experts, batch, dim = means.shape
  present = np.ones((num_experts, batch), bool) if present is None else present
  mean, log_variance = np.zeros((batch, dim)), np.zeros((batch, dim))
  for b in range(batch):
    precisions = [np.exp(-log_variances[m, b]) for m in range(num_experts) if present[m, b]]
    weighted = [np.exp(-log_variances[m, b]) * means[m, b] for m in range(num_experts) if present[m, b]]
    if prior or not precisions:
      precisions.append(np.ones(dim))
      weighted.append(np.zeros(dim))
    total = np.sum(precisions, axis=0)
    mean[b], log_variance[b] = np.sum(weighted, axis=0) / total, -np.log(total)
  return mean, log_variance


def _random_experts(rng, shape, log_variance_scale=1.0):
  return rng.normal(size=shape), rng.normal(scale=log_variance_scale, size=shape)


def test_one_expert_with_the_prior_is_the_closed_form():
  mu, variance = np.array([[[1.5, -2.0, 0.3]]]), np.array([[[0.25, 4.0, 1.0]]])
  args = jnp.asarray(mu, jnp.float32), jnp.asarray(np.log(variance), jnp.float32)
  mean, log_variance = jax.jit(experts.product_of_experts)(*args)
  # N(μ, σ²)·N(0, 1) ∝ N(μ / (1 + σ²), σ² / (1 + σ²)).
  np.testing.assert_allclose(mean, (mu / (1 + variance))[0], rtol=1e-6)
  np.testing.assert_allclose(np.exp(log_variance), (variance / (1 + variance))[0], rtol=1e-6)


class AgainstNumpyTest(chex.TestCase):
  """Products of experts against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(True, False)
  def test_product_matches_numpy_with_presence(self, prior):
    rng = np.random.default_rng(0)
    means, log_variances = _random_experts(rng, (3, 5, 4))
    present = np.array([[1, 0, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], bool)
    got = self.variant(experts.product_of_experts, static_argnames="prior_expert")(
        jnp.asarray(means, jnp.float32), jnp.asarray(log_variances, jnp.float32), jnp.asarray(present), prior_expert=prior
    )
    chex.assert_shape(got, (5, 4))
    chex.assert_trees_all_close(got, tuple(poe_reference(means, log_variances, present, prior)), rtol=1e-5, atol=1e-6)
    # The last sample has no expert: with or without the prior expert, it gets N(0, I).
    np.testing.assert_array_equal(np.asarray(got[0])[4], 0.0)
    np.testing.assert_array_equal(np.asarray(got[1])[4], 0.0)


def test_extreme_log_variances_give_finite_values_and_gradients():
  means = np.array([[[1.0, -1.0]], [[3.0, 2.0]], [[-2.0, 0.5]]])
  log_variances = np.array([[[-30.0, 30.0]], [[30.0, -30.0]], [[-30.0, -30.0]]])
  args = (jnp.asarray(means, jnp.float32), jnp.asarray(log_variances, jnp.float32))
  mean, log_variance = experts.product_of_experts(*args)
  want_mean, want_log_variance = poe_reference(means, log_variances)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-5)
  np.testing.assert_allclose(log_variance, want_log_variance, rtol=1e-6)

  def objective(means, log_variances):
    mean, log_variance = experts.product_of_experts(means, log_variances)
    return jnp.sum(mean) + jnp.sum(log_variance)

  for grad in jax.grad(objective, argnums=(0, 1))(*args):
    assert np.all(np.isfinite(grad))


def test_absent_experts_cannot_change_the_output_and_get_zero_gradients():
  rng = np.random.default_rng(1)
  means, log_variances = _random_experts(rng, (3, 4, 5))
  present = np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1]], bool)
  want = poe_reference(means, log_variances, present)
  absent = ~present[..., None]
  for garbage_mean, garbage_log_variance in ((1e30, -1e4), (-1e30, 1e4), (0.0, -80.0), (3e38, 88.0)):
    garbage = (
        jnp.asarray(np.where(absent, garbage_mean, means), jnp.float32),
        jnp.asarray(np.where(absent, garbage_log_variance, log_variances), jnp.float32),
    )

    def objective(means, log_variances):
      mean, log_variance = experts.product_of_experts(means, log_variances, jnp.asarray(present))
      return jnp.sum(jnp.sin(mean)) + jnp.sum(jnp.cos(log_variance)), (mean, log_variance)

    (_, got), grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))(*garbage)
    for got_part, want_part in zip(got, want):
      np.testing.assert_allclose(got_part, want_part, rtol=1e-5, atol=1e-6)
    for grad in grads:
      grad = np.asarray(grad)
      assert np.all(np.isfinite(grad))
      assert np.all(grad[np.broadcast_to(absent, grad.shape)] == 0)
      assert np.all(grad[np.broadcast_to(~absent, grad.shape)] != 0)


def test_product_under_vmap_over_independent_problems():
  rng = np.random.default_rng(2)
  means, log_variances = _random_experts(rng, (3, 2, 4, 3))  # 3 problems of 2 experts
  got = jax.vmap(experts.product_of_experts)(jnp.asarray(means, jnp.float32), jnp.asarray(log_variances, jnp.float32))
  for index in range(3):
    for got_part, want_part in zip(got, poe_reference(means[index], log_variances[index])):
      np.testing.assert_allclose(got_part[index], want_part, rtol=1e-5, atol=1e-6)


def _check_stratification(component, present):
  component, present = np.asarray(component), np.asarray(present)
  patterns = {}
  for b, pattern in enumerate(map(tuple, present.T)):
    patterns.setdefault(pattern, []).append(b)
  for pattern, rows in patterns.items():
    chosen = component[rows]
    available = np.flatnonzero(pattern)
    if not len(available):
      assert np.all(chosen == 0)
      continue
    assert set(chosen) <= set(available), (pattern, chosen)
    counts = np.array([np.sum(chosen == c) for c in available])
    assert counts.sum() == len(rows) and counts.max() - counts.min() <= 1, (pattern, counts)
    # Contiguous blocks in batch order, components in increasing order.
    assert np.all(np.diff(chosen) >= 0), chosen


def test_stratified_components_cover_present_components_in_proportion():
  rng = np.random.default_rng(3)
  select = jax.jit(experts.stratified_components)
  for num_components, batch in [(1, 1), (1, 7), (3, 1), (3, 37), (4, 37)] * 3:
    present = rng.uniform(size=(num_components, batch)) < rng.uniform(0.2, 1.0)
    component = select(jnp.asarray(present))
    assert component.shape == (batch,) and component.dtype == jnp.int32
    _check_stratification(component, present)
    np.testing.assert_array_equal(component, select(jnp.asarray(present)))  # deterministic


def test_stratified_components_with_everything_present_are_mopoe_blocks():
  def mopoe_selection(num_components, batch):
    """MoPoE's ``mixture_component_selection`` with uniform weights."""
    selection, start = [], 0
    for k in range(num_components):
      end = batch if k == num_components - 1 else start + int(np.floor(batch / num_components))
      selection += [k] * (end - start)
      start = end
    return selection

  for num_components, batch in ((2, 8), (3, 12), (7, 28), (4, 256)):
    got = jax.jit(experts.stratified_components)(jnp.ones((num_components, batch), bool))
    np.testing.assert_array_equal(got, mopoe_selection(num_components, batch))


def test_stratified_components_under_vmap():
  present = jnp.array([[[1, 1, 0, 1], [1, 0, 1, 1]], [[0, 1, 1, 1], [1, 1, 1, 0]]], bool)
  batched = jax.jit(jax.vmap(experts.stratified_components))(present)
  for index in range(2):
    _check_stratification(batched[index], present[index])


def test_mixture_selects_each_rows_component_and_routes_gradients_to_it():
  rng = np.random.default_rng(4)
  loc, log_scale = rng.normal(size=(3, 6, 2)), rng.normal(size=(3, 6, 2))
  present = np.array([[1, 1, 0, 1, 0, 0], [1, 0, 1, 1, 1, 0], [1, 1, 1, 0, 1, 0]], bool)
  stacked = DiagonalLaplace(jnp.asarray(loc, jnp.float32), jnp.asarray(log_scale, jnp.float32))

  def objective(stacked):
    selected, component = experts.mixture_of_experts(stacked, jnp.asarray(present))
    return jnp.sum(jnp.sin(selected.loc) + jnp.cos(selected.log_scale)), (selected, component)

  (_, (selected, component)), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(stacked)
  component = np.asarray(component)
  _check_stratification(component, present)
  rows = np.arange(6)
  np.testing.assert_allclose(selected.loc[:5], loc[component, rows][:5], rtol=1e-6)
  np.testing.assert_allclose(selected.log_scale[:5], log_scale[component, rows][:5], rtol=1e-6)
  np.testing.assert_array_equal(selected.loc[5], 0.0)  # no component present: the standard Laplace
  chosen = np.zeros((3, 6), bool)
  chosen[component[:5], rows[:5]] = True
  for grad in jax.tree.leaves(grads):
    assert np.all(np.asarray(grad)[chosen] != 0) and np.all(np.asarray(grad)[~chosen] == 0)


def test_modality_subsets():
  assert experts.modality_subsets(1) == ((0,),)
  assert experts.modality_subsets(3) == ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))
  five = experts.modality_subsets(5)
  assert len(five) == 31 and len(set(five)) == 31
  assert set(five) == {s for r in range(1, 6) for s in itertools.combinations(range(5), r)}
  with pytest.raises(ValueError, match="num_modalities: expected a positive int, got 0"):
    experts.modality_subsets(0)


@pytest.mark.parametrize("prior_subsets", ["none", "all", "full"])
def test_subset_products_match_numpy_and_availability_needs_every_member(prior_subsets):
  rng = np.random.default_rng(5)
  means, log_variances = _random_experts(rng, (3, 8, 2))
  present = rng.uniform(size=(3, 8)) < 0.6
  present[:, 0] = True
  products = jax.jit(functools.partial(experts.subset_products_of_experts, prior_subsets=prior_subsets))
  got_means, got_log_variances, available = products(
      jnp.asarray(means, jnp.float32), jnp.asarray(log_variances, jnp.float32), jnp.asarray(present)
  )
  subsets = experts.modality_subsets(3)
  assert got_means.shape == (7, 8, 2) and available.shape == (7, 8)
  for s, subset in enumerate(subsets):
    np.testing.assert_array_equal(available[s], np.all(present[list(subset)], axis=0))
    with_prior = prior_subsets == "all" or (prior_subsets == "full" and len(subset) == 3)
    members = list(subset)
    want_mean, want_log_variance = poe_reference(means[members], log_variances[members], present[members], with_prior)
    for b in np.flatnonzero(available[s]):
      np.testing.assert_allclose(got_means[s, b], want_mean[b], rtol=1e-5, atol=1e-6)
      np.testing.assert_allclose(got_log_variances[s, b], want_log_variance[b], rtol=1e-5, atol=1e-6)


def test_mixture_of_products_picks_available_subsets_in_proportion():
  rng = np.random.default_rng(6)
  means, log_variances = _random_experts(rng, (3, 24, 2))
  present = np.ones((3, 24), bool)
  present[2, 12:] = False  # half the batch lacks modality 2: subsets (0,), (1,), (0, 1) only
  args = (jnp.asarray(means, jnp.float32), jnp.asarray(log_variances, jnp.float32), jnp.asarray(present))
  mean, log_variance, subset = jax.jit(experts.mixture_of_products_of_experts)(*args)
  subset_means, subset_log_variances, available = experts.subset_products_of_experts(*args)
  subset = np.asarray(subset)
  _check_stratification(subset, np.asarray(available))
  assert set(subset[:12]) == set(range(7)) and set(subset[12:]) == {0, 1, 3}
  rows = np.arange(24)
  np.testing.assert_allclose(mean, np.asarray(subset_means)[subset, rows], rtol=1e-6)
  np.testing.assert_allclose(log_variance, np.asarray(subset_log_variances)[subset, rows], rtol=1e-6)


def test_mixture_of_products_under_vmap_over_independent_problems():
  rng = np.random.default_rng(8)
  means, log_variances = _random_experts(rng, (2, 3, 6, 2))  # 2 problems of 3 experts
  present = rng.uniform(size=(2, 3, 6)) < 0.7
  args = (jnp.asarray(means, jnp.float32), jnp.asarray(log_variances, jnp.float32), jnp.asarray(present))
  batched = jax.jit(jax.vmap(experts.mixture_of_products_of_experts))(*args)
  for index in range(2):
    single = experts.mixture_of_products_of_experts(*(a[index] for a in args))
    for got, want in zip(batched, single):
      np.testing.assert_allclose(got[index], want, rtol=1e-6)


def test_mixture_of_products_gradients_are_finite_with_garbage_in_absent_experts():
  rng = np.random.default_rng(7)
  means, log_variances = _random_experts(rng, (2, 6, 3))
  present = np.array([[1, 1, 0, 1, 0, 1], [1, 0, 1, 1, 0, 1]], bool)
  absent = ~present[..., None]
  garbage = (
      jnp.asarray(np.where(absent, 1e30, means), jnp.float32),
      jnp.asarray(np.where(absent, -1e4, log_variances), jnp.float32),
  )

  def objective(means, log_variances):
    mean, log_variance, _ = experts.mixture_of_products_of_experts(means, log_variances, jnp.asarray(present))
    return jnp.sum(mean) + jnp.sum(log_variance)

  value, grads = jax.jit(jax.value_and_grad(objective, argnums=(0, 1)))(*garbage)
  assert np.isfinite(value)
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[np.broadcast_to(absent, grad.shape)] == 0)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: experts.product_of_experts(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 2))), r"product_of_experts: log_variances: expected shape \(M, B, D\) with M=2, B=4, D=3, got \(2, 4, 2\)"),
        (lambda: experts.product_of_experts(jnp.zeros((4, 3)), jnp.zeros((4, 3))), r"product_of_experts: means: expected shape \(M, B, D\), got \(4, 3\)"),
        (lambda: experts.product_of_experts(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3)), jnp.ones((4, 2), bool)), r"product_of_experts: present: expected shape \(M, B\) with M=2, B=4, got \(4, 2\)"),
        (lambda: experts.product_of_experts(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3)), jnp.ones((2, 4))), r"product_of_experts: present: expected a bool array"),
        (lambda: experts.stratified_components(jnp.ones((4,), bool)), r"stratified_components: present: expected shape \(C, B\), got \(4,\)"),
        (lambda: experts.mixture_of_experts((jnp.zeros((2, 4, 3)), jnp.zeros((2, 5, 3)))), r"mixture_of_experts: experts\[1\]: expected shape \(C, B, \?\) with C=2, B=4, got \(2, 5, 3\)"),
        (lambda: experts.subset_products_of_experts(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3)), prior_subsets="some"), r"prior_subsets: expected one of \('none', 'all', 'full'\), got 'some'"),
    ],
)
def test_bad_inputs_raise_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
