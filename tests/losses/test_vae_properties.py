"""Property-based tests (hypothesis) of the VAE building blocks: likelihoods, posteriors, bounds,
DReG, products and mixtures of experts, correlation losses. Random shapes, presence masks
(all-absent included), extreme but finite values and log-variances of ±30 give finite values and
gradients; absent or padded entries get zero gradients; wrong shapes raise a ValueError naming the
argument.
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mmjax import losses
from mmjax.fusion import experts
from mmjax.losses import DiagonalGaussian, DiagonalLaplace

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
extreme = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
log_variance = st.floats(-30, 30, width=32, allow_subnormal=False)
unit = st.floats(0, 1, width=32, allow_subnormal=False)


def _all_finite(tree) -> bool:
  return all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree.leaves(tree))


# ---------------------------------------------------------------------------------------------
# Likelihoods

LIKELIHOODS = ["bernoulli", "gaussian", "laplace", "categorical_labels", "categorical_one_hot", "tokens"]
EVENT_SHAPES = [(1,), (4,), (2, 3)]


@functools.lru_cache(maxsize=None)
def _likelihood(name):
  def total(params, log_scale, targets, mask):
    if name == "bernoulli":
      values = losses.bernoulli_log_likelihood(params, targets)
    elif name == "gaussian":
      values = losses.gaussian_log_likelihood(params, log_scale, targets)
    elif name == "laplace":
      values = losses.laplace_log_likelihood(params, log_scale, targets)
    elif name == "tokens":
      values = losses.token_log_likelihood(params, targets, mask)
    else:
      values = losses.categorical_log_likelihood(params, targets, mask=mask)
    return jnp.sum(values), values

  return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))


@SETTINGS
@given(name=st.sampled_from(LIKELIHOODS), batch=st.sampled_from([1, 3]), event=st.sampled_from(EVENT_SHAPES), data=st.data())
def test_likelihoods_are_finite_on_extreme_inputs(name, batch, event, data):
  mask = None
  log_scale = np.float32(0)
  if name in ("categorical_labels", "categorical_one_hot", "tokens"):
    classes = 5
    event = (4,) if name == "tokens" else event
    params = data.draw(hnp.arrays(np.float32, (batch, *event, classes), elements=extreme), label="logits")
    mask = data.draw(hnp.arrays(np.bool_, (batch, *event)), label="mask")
    labels = data.draw(hnp.arrays(np.int32, (batch, *event), elements=st.integers(0, classes - 1)), label="labels")
    # Padding may hold any id: out-of-range ones where the mask is False.
    labels = np.where(mask, labels, 1000).astype(np.int32)
    targets = np.eye(classes, dtype=np.float32)[labels % classes] if name == "categorical_one_hot" else labels
  else:
    params = data.draw(hnp.arrays(np.float32, (batch, *event), elements=extreme), label="params")
    elements = unit if name == "bernoulli" else extreme
    targets = data.draw(hnp.arrays(np.float32, (batch, *event), elements=elements), label="targets")
    scale_shape = data.draw(st.sampled_from([(), event, (batch, *event)]), label="log_scale shape")
    log_scale = data.draw(hnp.arrays(np.float32, scale_shape, elements=log_variance), label="log_scale")
  (_, values), grads = _likelihood(name)(params, log_scale, targets, mask)
  assert values.shape == (batch,) and values.dtype == jnp.float32
  assert _all_finite(values) and _all_finite(grads), name
  if mask is not None:
    assert not np.any(np.asarray(grads[0])[~mask])


@SETTINGS
@given(batch=st.integers(1, 4), wrong=st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple))
def test_likelihoods_reject_mismatched_targets_naming_them(batch, wrong):
  shape = (batch, 3)
  if wrong == shape:
    wrong = (*wrong, 1)
  with pytest.raises(ValueError) as error:
    losses.laplace_log_likelihood(np.zeros(shape, np.float32), 0.0, np.zeros(wrong, np.float32))
  assert f"laplace_log_likelihood: targets: expected shape {shape}, got {wrong}" in str(error.value)


# ---------------------------------------------------------------------------------------------
# Posteriors

@functools.lru_cache(maxsize=None)
def _posterior_terms(family):
  cls = {"gaussian": DiagonalGaussian, "laplace": DiagonalLaplace}[family]

  def terms(first, second, z, key):
    q = cls(first, second)
    kl = q.kl_to_standard_normal() if family == "gaussian" else q.kl_to_standard_laplace()
    sample = q.sample(key, 2)
    return jnp.sum(q.log_prob(z)) + jnp.sum(kl) + jnp.sum(jnp.tanh(sample)), (q.log_prob(z), kl, sample)

  return jax.jit(jax.value_and_grad(terms, argnums=(0, 1, 2), has_aux=True))


@SETTINGS
@given(family=st.sampled_from(["gaussian", "laplace"]), shape=st.sampled_from([(1,), (3,), (2, 4)]), data=st.data())
def test_posteriors_are_finite_on_extreme_parameters(family, shape, data):
  loc = data.draw(hnp.arrays(np.float32, shape, elements=extreme), label="loc")
  log_param = data.draw(hnp.arrays(np.float32, shape, elements=log_variance), label="log-variance or log-scale")
  z = data.draw(hnp.arrays(np.float32, shape, elements=extreme), label="z")
  key = jax.random.key(data.draw(st.integers(0, 9), label="seed"))
  (_, (log_prob, kl, sample)), grads = _posterior_terms(family)(loc, log_param, z, key)
  assert _all_finite((log_prob, kl, sample, grads)), family
  assert np.all(np.asarray(kl) >= -1e-4 * (1 + np.abs(np.asarray(kl))))  # a KL divergence is never negative


@functools.lru_cache(maxsize=None)
def _mixture():
  def total(means, log_variances, z, present):
    return jnp.sum(losses.mixture_log_prob(DiagonalGaussian(means, log_variances), z, present))

  return jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2)))


@SETTINGS
@given(num=st.integers(1, 3), batch=st.sampled_from([1, 4]), data=st.data())
def test_mixture_density_is_finite_and_ignores_absent_components(num, batch, data):
  means = data.draw(hnp.arrays(np.float32, (num, batch, 2), elements=extreme), label="means")
  log_variances = data.draw(hnp.arrays(np.float32, (num, batch, 2), elements=log_variance), label="log_variances")
  z = data.draw(hnp.arrays(np.float32, (3, batch, 2), elements=st.floats(-100, 100, width=32)), label="z")
  present = data.draw(hnp.arrays(np.bool_, (num, batch)), label="present")
  value, grads = _mixture()(means, log_variances, z, present)
  assert np.isfinite(value) and _all_finite(grads)
  assert not np.any(np.asarray(grads[0])[~present]) and not np.any(np.asarray(grads[1])[~present])


# ---------------------------------------------------------------------------------------------
# Products and mixtures of experts

@functools.lru_cache(maxsize=None)
def _experts(name, prior):
  def total(means, log_variances, present):
    if name == "product":
      mean, log_var = experts.product_of_experts(means, log_variances, present, prior_expert=prior)
    elif name == "mixture":
      (mean, log_var), _ = experts.mixture_of_experts((means, log_variances), present)
    else:
      prior_subsets = "full" if prior else "none"
      mean, log_var, _ = experts.mixture_of_products_of_experts(means, log_variances, present, prior_subsets=prior_subsets)
    return jnp.sum(jnp.sin(mean)) + jnp.sum(log_var), (mean, log_var)

  return jax.jit(jax.value_and_grad(total, argnums=(0, 1), has_aux=True))


@SETTINGS
@given(
    name=st.sampled_from(["product", "mixture", "mopoe"]),
    prior=st.booleans(),
    num=st.sampled_from([1, 3]),
    batch=st.sampled_from([1, 4]),
    data=st.data(),
)
def test_experts_are_finite_with_extreme_log_variances_and_any_presence(name, prior, num, batch, data):
  dim = 3
  means = data.draw(hnp.arrays(np.float32, (num, batch, dim), elements=extreme), label="means")
  log_variances = data.draw(hnp.arrays(np.float32, (num, batch, dim), elements=log_variance), label="log_variances")
  present = data.draw(hnp.arrays(np.bool_, (num, batch)), label="present")  # all-absent included
  (_, (mean, log_var)), grads = _experts(name, prior)(means, log_variances, present)
  assert mean.shape == (batch, dim)
  assert _all_finite((mean, log_var, grads)), name
  for grad in grads:
    assert not np.any(np.asarray(grad)[~present]), name
  if name == "product":
    # The product is at least as precise as its most precise factor (the prior included).
    factors = np.where(present[..., None], log_variances, np.inf).min(axis=0)
    if prior:
      factors = np.minimum(factors, 0.0)
    bound = np.where(np.isfinite(factors), factors, 0.0)
    assert np.all(np.asarray(log_var) <= bound + 1e-4 * (1 + np.abs(bound)))


@SETTINGS
@given(num=st.sampled_from([1, 3]), batch=st.sampled_from([1, 7, 12]), data=st.data())
def test_stratified_selection_only_picks_present_components_evenly(num, batch, data):
  present = data.draw(hnp.arrays(np.bool_, (num, batch)), label="present")
  component = np.asarray(jax.jit(experts.stratified_components)(present))
  for pattern in {tuple(column) for column in present.T}:
    rows = [b for b in range(batch) if tuple(present[:, b]) == pattern]
    chosen = component[rows]
    available = np.flatnonzero(pattern)
    if len(available):
      counts = [np.sum(chosen == c) for c in available]
      assert set(chosen) <= set(available) and max(counts) - min(counts) <= 1
    else:
      assert np.all(chosen == 0)


@SETTINGS
@given(num=st.integers(1, 3), batch=st.integers(1, 4), data=st.data())
def test_experts_reject_bad_presence_naming_it(num, batch, data):
  zeros = np.zeros((num, batch, 2), np.float32)
  wrong = data.draw(st.tuples(st.integers(1, 4), st.integers(1, 5)).filter(lambda s: s != (num, batch)), label="wrong")
  with pytest.raises(ValueError) as error:
    experts.product_of_experts(zeros, zeros, np.ones(wrong, bool))
  assert f"product_of_experts: present: expected shape (M, B) with M={num}, B={batch}, got {wrong}" in str(error.value)


# ---------------------------------------------------------------------------------------------
# Bounds and estimators

@functools.lru_cache(maxsize=None)
def _bounds():
  def total(log_weights, present):
    looser = losses.mmvae_looser_bound(log_weights, present)
    return jnp.sum(looser), (losses.iwae_bound(log_weights[0]), looser)

  return jax.jit(jax.value_and_grad(total, has_aux=True))


@SETTINGS
@given(num=st.sampled_from([1, 3]), samples=st.sampled_from([1, 4]), batch=st.sampled_from([1, 3]), data=st.data())
def test_bounds_are_finite_and_ordered_on_extreme_log_weights(num, samples, batch, data):
  log_weights = data.draw(hnp.arrays(np.float32, (num, samples, batch), elements=extreme), label="log_weights")
  present = data.draw(hnp.arrays(np.bool_, (num, batch)), label="present")
  (_, (iwae, looser)), grad = _bounds()(log_weights, present)
  assert _all_finite((iwae, looser, grad))
  first = log_weights[0].astype(np.float64)
  tolerance = 1e-3 * (1 + np.abs(first).max())
  # mean log w ≤ IWAE ≤ max log w.
  assert np.all(first.mean(0) <= np.asarray(iwae) + tolerance) and np.all(np.asarray(iwae) <= first.max(0) + tolerance)
  assert not np.any(np.broadcast_to(~present[:, None, :], grad.shape) & (np.asarray(grad) != 0))


@functools.lru_cache(maxsize=None)
def _dreg():
  def bound(mean, log_var, x, key):
    q = DiagonalGaussian(mean, log_var)
    z = q.sample(key, 3)

    def log_weights(z):
      prior = jnp.sum(-0.5 * jnp.square(z), -1)
      likelihood = jnp.sum(-0.5 * jnp.square(x - jnp.tanh(z)), -1)
      return prior + likelihood - q.stop_gradient().log_prob(z)

    return jnp.sum(losses.dreg_iwae_surrogate(log_weights, z))

  return jax.jit(jax.value_and_grad(bound, argnums=(0, 1)))


@SETTINGS
@given(batch=st.sampled_from([1, 3]), dim=st.sampled_from([1, 2]), data=st.data())
def test_dreg_is_finite_with_extreme_posteriors(batch, dim, data):
  mean = data.draw(hnp.arrays(np.float32, (batch, dim), elements=st.floats(-1e3, 1e3, width=32)), label="mean")
  log_var = data.draw(hnp.arrays(np.float32, (batch, dim), elements=log_variance), label="log_variance")
  x = data.draw(hnp.arrays(np.float32, (batch, dim), elements=extreme), label="x")
  value, grads = _dreg()(mean, log_var, x, jax.random.key(data.draw(st.integers(0, 9))))
  assert np.isfinite(value) and _all_finite(grads)


@SETTINGS
@given(step=st.integers(-10**6, 10**6), warmup=st.integers(0, 10**5), beta=st.floats(0, 10))
def test_kl_warmup_stays_in_range_and_never_decreases(step, warmup, beta):
  warmup_weight = jax.jit(jax.vmap(lambda s, w, b: losses.kl_warmup(s, w, beta=b), in_axes=(0, None, None)))
  weights = np.asarray(warmup_weight(jnp.array([step, step + 1]), warmup, beta))
  assert np.all((0 <= weights) & (weights <= np.float32(beta) * (1 + 1e-6))) and weights[1] >= weights[0]


# ---------------------------------------------------------------------------------------------
# Correlation losses

@functools.lru_cache(maxsize=None)
def _correlation(name):
  def loss(first, second, mask):
    if name == "cosine":
      return losses.cosine_alignment_loss(first, second, mask=mask)
    return losses.cca_loss(first, second, mask=mask)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


@SETTINGS
@given(name=st.sampled_from(["cosine", "cca"]), batch=st.sampled_from([1, 9]), dim=st.sampled_from([1, 3]), data=st.data())
def test_correlation_losses_are_finite_on_extreme_inputs(name, batch, dim, data):
  first = data.draw(hnp.arrays(np.float32, (batch, dim), elements=extreme), label="first")
  second = data.draw(hnp.arrays(np.float32, (batch, dim), elements=extreme), label="second")
  mask = data.draw(hnp.arrays(np.bool_, (batch,)), label="mask")  # all-False included
  value, grads = _correlation(name)(first, second, mask)
  assert np.isfinite(value) and _all_finite(grads), name
  low, high = (0.0, 2.0) if name == "cosine" else (-dim, 0.0)
  assert low - 1e-5 <= float(value) <= high + 1e-5, (name, value)
  for grad in grads:
    assert not np.any(np.asarray(grad)[~mask])
